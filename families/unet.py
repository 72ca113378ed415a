"""UNets with SpatialTransformers: SDXL, SD1.x and SD2.x.

Layers are indexed as in the paper: every attention module in diffusers order (attn1 then attn2
of each transformer block; input blocks, middle, output blocks), so SDXL has 140 modules: Down
0-47, Mid 48-67, Up 68-139; self-attention (attn1) modules are the even indices. A call is
placed by the host's ``block``/``block_index`` options, once the attn1 marker (unet_attn1.py)
says it is attn1 and not the cross-attention of the same block.
"""

from __future__ import annotations

from ..hook.layers import LayerId, LayerMap
from .base import FamilyAdapter, InputSpace, Placement, UnsupportedModelError
from .unet_attn1 import (
    Attn1Marker,
    block_key,
    effective_weight,
    take_block_input,
    unet_attn1_marker,
)

GROUPS = {"input": "down", "middle": "mid", "output": "up"}


def unet_layer_map(transformer_depths: list[tuple[str, int, int]]) -> LayerMap:
    """Layer map of a UNet from its transformer blocks in forward order.

    ``transformer_depths``: one (block name, block number, depth) per SpatialTransformer, e.g.
    ("input", 4, 2) for SDXL's first transformer (two BasicTransformerBlocks). Each
    BasicTransformerBlock holds attn1 (index 2n) and attn2 (index 2n + 1).
    """
    layers, by_key, module = [], {}, 0
    for name, number, depth in transformer_depths:
        for block_index in range(depth):
            layer = LayerId("sdxl", module, GROUPS[name], "self")
            layers.append(layer)
            by_key[(name, number, block_index)] = layer
            module += 2
    return LayerMap(
        "sdxl", tuple(layers), by_key, ("down", "mid", "up"),
        last_index=module - 1,  # the last attn2 module
        index_hint="UNet self-attention modules are the even indices of the paper's SDXL "
        "index, 0-139 on SDXL",
    )


def unet_transformers(unet) -> list[tuple[str, int, object]]:
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


class UNetInputSpace(InputSpace):
    """attn1's input X (kept by the marker) and its to_v projection as applied."""

    def __init__(self, marker: Attn1Marker, attn1_modules: dict):
        self.marker, self.attn1_modules = marker, attn1_modules

    def block_input(self, options: dict):
        return take_block_input(self.marker, options)

    def value_projection(self, options: dict, like):
        return effective_weight(self.attn1_modules[block_key(options)].to_v, like)

    def channel_widths(self) -> frozenset[int]:
        return frozenset(attn1.to_v.in_features for attn1 in self.attn1_modules.values())


class UNetFamily(FamilyAdapter):
    name = "sdxl"
    supported = "SDXL (and SD1.x/SD2.x UNets)"

    def __init__(self, model_patcher):
        self.marker: Attn1Marker | None = None
        super().__init__(model_patcher)

    @staticmethod
    def matches(diffusion_model) -> bool:
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

        return isinstance(diffusion_model, UNetModel)

    def build_layer_map(self, model_patcher) -> LayerMap:
        net = model_patcher.get_model_object("diffusion_model")
        depths = [(n, i, len(t.transformer_blocks)) for n, i, t in unet_transformers(net)]
        if not depths:
            raise UnsupportedModelError("this UNet has no transformer (self-attention) blocks")
        return unet_layer_map(depths)

    def install(self, model_patcher) -> None:
        self.marker = unet_attn1_marker(model_patcher)

    def place(self, options: dict, n_q: int, n_k: int,
              latent_shape: tuple[int, ...] | None) -> Placement | None:
        shape = options.get("activations_shape")
        layer = self.self_attention_layer(options) if shape is not None else None
        if layer is None:
            return None
        h, w = int(shape[-2]), int(shape[-1])
        if not n_q == n_k == h * w:  # tokens merged or tiled by another patch
            self.note_unreachable(layer, n_q, n_k)
            return None
        return Placement(layer, (h, w))

    def self_attention_layer(self, options: dict) -> LayerId | None:
        block, marker = options.get("block"), self.marker
        if block is None or marker is None or not marker.is_attn1(options):
            return None  # attn2 (cross-attention), or a call outside a transformer block
        return self.layer_map.by_key.get((block[0], block[1], options.get("block_index", 0)))

    def input_space(self, model_patcher) -> UNetInputSpace:
        net = model_patcher.get_model_object("diffusion_model")
        attn1_modules = {
            ((name, number), block_index): block.attn1
            for name, number, transformer in unet_transformers(net)
            for block_index, block in enumerate(transformer.transformer_blocks)
        }
        return UNetInputSpace(unet_attn1_marker(model_patcher), attn1_modules)
