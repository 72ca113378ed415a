"""Anima (newer ComfyUI: an image model on Cosmos Predict2's ``MiniTrainDIT`` backbone).

Each block attends over the image's tokens alone (self-attention, q and k after qk-norm and
RoPE, [B, H, L, d] with ``skip_reshape``), then to the text (cross-attention). Layers are the
blocks in forward order (their count read from the model), in early/middle/late thirds; the
image's tokens are the whole sequence.

Both calls of a block carry the same options (the host's ``block_index``), and their shapes
agree whenever the image has as many tokens as the text (at least 512: the model pads it). So
two patches the model calls right before each attention tell them apart: its ``attn1_patch``
(before the self-attention) marks the block, its ``attn2_patch`` (before the cross-attention)
clears the mark. Both hand their inputs on untouched. The mark is per thread (unet_attn1.py).

Hosts older than the block index and these patches (ComfyUI 0.3.64 has neither Anima nor
them) cannot place a call: the model is refused there. Cosmos Predict2's own checkpoints are
video models (several frames per latent), refused as the other video models are.
"""

from __future__ import annotations

import math

from ..hook.layers import LayerId, LayerMap
from .base import (
    FamilyAdapter,
    Placement,
    UnsupportedModelError,
    capture_in_unets_only,
    code_constants,
    patch_grid,
)
from .dit_blocks import self_attention_layer_map
from .unet_attn1 import MARKER_ATTR, Attn1Marker, block_key, installed_marker

OLD_HOST = (
    "Anima can be steered and probed on ComfyUI versions whose Cosmos blocks tell attention "
    "which block runs and call attn1/attn2 patches; this ComfyUI does not, so no call could be "
    "placed. Update ComfyUI to use the Hopfield Circulation nodes with this model"
)


def host_marks_blocks() -> bool:
    """Whether the host's MiniTrainDIT names the running block and its attention calls the
    attn1/attn2 patches (read from their code's constants, once per patch)."""
    from comfy.ldm.cosmos import predict2

    return ("block_index" in code_constants(predict2.MiniTrainDIT._forward)
            and "attn1_patch" in code_constants(predict2.Attention.compute_qkv))


def anima_marker(model_patcher) -> Attn1Marker:
    """The self-attention marker on ``model_patcher``, its two patches installed once per
    model lineage."""
    marker = installed_marker(model_patcher)
    if marker is not None:
        return marker
    marker = Attn1Marker()

    def mark_self_attention(q, k, v, extra_options=None, **kwargs):
        marker.key = block_key(extra_options or {})
        return {}  # the model keeps its q, k, v and RoPE

    def clear_mark(q, k, v, extra_options=None, **kwargs):
        marker.key = None
        return {}

    setattr(mark_self_attention, MARKER_ATTR, marker)
    model_patcher.set_model_attn1_patch(mark_self_attention)
    model_patcher.set_model_attn2_patch(clear_mark)
    return marker


class AnimaFamily(FamilyAdapter):
    name = "anima"
    supported = "Anima"
    input_space_refusal = capture_in_unets_only("Anima's blocks")

    @staticmethod
    def matches(diffusion_model) -> bool:
        try:
            from comfy.ldm.anima.model import Anima
        except ImportError:  # hosts older than Anima
            return False
        if not isinstance(diffusion_model, Anima):
            return False
        if not host_marks_blocks():
            raise UnsupportedModelError(OLD_HOST)
        return True

    def build_layer_map(self, model_patcher) -> LayerMap:
        net = model_patcher.get_model_object("diffusion_model")
        self.patch = (int(net.patch_temporal), int(net.patch_spatial))
        self.marker: Attn1Marker | None = None
        return self_attention_layer_map(self.name, "Anima", len(net.blocks), "blocks")

    def install(self, model_patcher) -> None:
        self.marker = anima_marker(model_patcher)

    def self_attention_layer(self, options: dict) -> LayerId | None:
        if self.marker is None or not self.marker.is_attn1(options):
            return None  # a cross-attention (its mark cleared), or not known
        return self.layer_map.by_key.get((options.get("block_index"),))

    def place(self, options: dict, n_q: int, n_k: int,
              latent_shape: tuple[int, ...] | None) -> Placement | None:
        layer = self.self_attention_layer(options)
        if layer is None or latent_shape is None:
            return None
        frames = math.ceil(latent_shape[-3] / self.patch[0]) if len(latent_shape) == 5 else 1
        grid = patch_grid(latent_shape, self.patch[1])
        if frames != 1 or n_q != grid[0] * grid[1]:
            return None  # several frames: a video latent
        return Placement(layer, grid)
