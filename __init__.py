"""Hopfield Circulation: skew-circulation control and Hopfield stability probes for ComfyUI.

ComfyUI imports this file; the node classes (which need ComfyUI) are imported only when the
host asks for them, so the ComfyUI-free core in ``hopfield/`` can be imported and tested alone.
"""

WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    from .nodes import HopfieldCirculationExtension

    return HopfieldCirculationExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
