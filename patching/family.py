"""Recognise the model family behind a ModelPatcher and map its self-attention layers.

Only UNets of the SD1.x/SD2.x/SDXL kind (``UNetModel`` with SpatialTransformers) and SD3's MMDiT
are supported; anything else is refused with a message naming what was found, so a node never
silently does nothing on, say, Flux.
"""

from __future__ import annotations

from .layers import LayerMap, sd3_layer_map, unet_layer_map


class UnsupportedModelError(ValueError):
    pass


def _unet_transformers(unet) -> list[tuple[str, int, object]]:
    """(block name, block number, SpatialTransformer) in forward order."""
    from comfy.ldm.modules.attention import SpatialTransformer

    found = []
    for name, blocks in (
        ("input", unet.input_blocks),
        ("middle", [unet.middle_block]),
        ("output", unet.output_blocks),
    ):
        for number, block in enumerate(blocks):
            for module in block:
                if isinstance(module, SpatialTransformer):
                    found.append((name, number, module))
    return found


def diffusion_model_of(model_patcher):
    return model_patcher.get_model_object("diffusion_model")


def model_family(model_patcher) -> str:
    """"sdxl" (any SpatialTransformer UNet) or "sd3" (MMDiT); raises for anything else."""
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    net = diffusion_model_of(model_patcher)
    if isinstance(net, UNetModel):
        return "sdxl"
    if isinstance(net, MMDiT):
        return "sd3"
    base = type(model_patcher.model).__name__
    raise UnsupportedModelError(
        f"Hopfield Circulation supports SDXL (and SD1.x/SD2.x UNets) and SD3/SD3.5 MMDiT "
        f"models; this model is {base} with a {type(net).__name__} backbone"
    )


def layer_map_of(model_patcher) -> LayerMap:
    family = model_family(model_patcher)
    net = diffusion_model_of(model_patcher)
    if family == "sd3":
        return sd3_layer_map(len(net.joint_blocks))
    depths = [(n, i, len(t.transformer_blocks)) for n, i, t in _unet_transformers(net)]
    if not depths:
        raise UnsupportedModelError("this UNet has no transformer (self-attention) blocks")
    return unet_layer_map(depths)


def unet_attn1(model_patcher, block: tuple[str, int], block_index: int):
    """The attn1 CrossAttention module at (block, block_index), for the input-space mode."""
    net = diffusion_model_of(model_patcher)
    for name, number, transformer in _unet_transformers(net):
        if (name, number) == tuple(block):
            return transformer.transformer_blocks[block_index].attn1
    raise KeyError(f"no transformer at {block}")
