"""One adapter per model family (``base.FamilyAdapter``), and detection: ``adapter_for`` gives
the adapter of a ModelPatcher's model, or refuses it with a message naming what is supported,
so a node never silently does nothing on an unsupported model.
"""

from __future__ import annotations

from .anima import AnimaFamily
from .auraflow import AuraFlowFamily
from .base import FamilyAdapter, InputSpace, Placement, UnsupportedModelError
from .flux import ChromaFamily, FluxFamily
from .hidream import HiDreamFamily
from .kandinsky5 import Kandinsky5Family
from .krea2 import Krea2Family
from .lumina import LuminaFamily
from .mmdit import MMDiTFamily
from .qwen_image import MageFlowFamily, QwenImageFamily
from .unet import UNetFamily

ADAPTERS: tuple[type[FamilyAdapter], ...] = (
    UNetFamily, MMDiTFamily, FluxFamily, ChromaFamily, QwenImageFamily, LuminaFamily, AnimaFamily,
    HiDreamFamily, AuraFlowFamily, Krea2Family, MageFlowFamily, Kandinsky5Family,
)


# Why some backbones the pack refuses are not supported (the host's class name -> the reason),
# said after the refusal
VIDEO = "a video model: the pack steers image models"
REFUSED_WHY = {
    "WanModel": VIDEO,
    "HunyuanVideo": VIDEO,
    "HiDreamO1Transformer": (
        "HiDream-O1's attention hands over the generated tokens' queries alone: its prompt is "
        "a causal prefix attended by SDPA directly and cached across steps, so the square "
        "logit matrix the paper splits into symmetric and skew parts never reaches a hook"),
}


def adapter_for(model_patcher) -> FamilyAdapter:
    """The adapter of this model's family, bound to it; raises UnsupportedModelError."""
    net = model_patcher.get_model_object("diffusion_model")
    for adapter in ADAPTERS:
        if adapter.matches(net):
            return adapter(model_patcher)
    names = [a.supported for a in ADAPTERS]
    supported = ", ".join(names[:-1]) + " and " + names[-1]
    backbone = type(net).__name__
    why = f" ({REFUSED_WHY[backbone]})" if backbone in REFUSED_WHY else ""
    raise UnsupportedModelError(
        f"Hopfield Circulation supports {supported} models; this model is "
        f"{type(model_patcher.model).__name__} with a {backbone} backbone{why}"
    )


def layer_names() -> tuple[str, ...]:
    """Every group or alias name a `layers` setting may use on some supported model, without a
    model (for checks at queue time; which of them a given model has is known at run time)."""
    from .dit_blocks import BLOCK_KINDS
    from .dit_blocks import GROUPS as DIT_GROUPS
    from .mmdit import GROUPS as MMDIT_GROUPS
    from .unet import GROUPS as UNET_GROUPS

    names = [*UNET_GROUPS.values(), *MMDIT_GROUPS, *DIT_GROUPS, *BLOCK_KINDS]
    return tuple(dict.fromkeys(names))


__all__ = ["ADAPTERS", "FamilyAdapter", "InputSpace", "Placement", "UnsupportedModelError",
           "adapter_for", "layer_names"]
