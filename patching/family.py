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
    from comfy.ldm.modules.attention import SpatialTransformer, SpatialVideoTransformer

    found = []
    for name, blocks in (
        ("input", unet.input_blocks),
        ("middle", [unet.middle_block]),
        ("output", unet.output_blocks),
    ):
        for number, block in enumerate(blocks):
            for module in block:
                if isinstance(module, SpatialVideoTransformer):
                    # Frames ride in the batch and temporal blocks attend across them: neither
                    # the branch split nor the paper's layer index holds.
                    raise UnsupportedModelError(
                        "Hopfield Circulation does not support video UNets (Stable Video "
                        "Diffusion); use an SDXL, SD1.x/SD2.x or SD3 model"
                    )
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
        return sd3_layer_map(len(net.joint_blocks), int(getattr(net, "patch_size", 2)))
    depths = [(n, i, len(t.transformer_blocks)) for n, i, t in _unet_transformers(net)]
    if not depths:
        raise UnsupportedModelError("this UNet has no transformer (self-attention) blocks")
    return unet_layer_map(depths)


def unet_attn1_modules(model_patcher) -> dict[tuple, object]:
    """Every attn1 CrossAttention module of a UNet, keyed like ``block_input.block_key``:
    ((block name, block number), block_index). For the input-space mode's W_v."""
    net = diffusion_model_of(model_patcher)
    return {
        ((name, number), block_index): block.attn1
        for name, number, transformer in _unet_transformers(net)
        for block_index, block in enumerate(transformer.transformer_blocks)
    }
