"""Tell a UNet's self-attention (attn1) apart from its cross-attention, and keep attn1's input X.

The attention override sees only q, k, v and the per-call options, which are the same for attn1
and attn2 of a transformer block; shapes alone are ambiguous whenever the text context has as
many tokens as the level has pixels (77 tokens = a 7x11 level). So a pair of block patches
brackets every attn1 call: the ``attn1_patch`` (run right before attn1) marks the block and keeps
the tensor attn1 projects its values from (X, for the paper's input space), and the
``attn1_output_patch`` (run right after, also when another node replaced attn1) clears it. A call
is attn1 exactly when the mark names its block. Both patches return their inputs untouched.

The marker is a plain object reached only through the patch closures: ComfyUI deep-copies
model_options on every clone but keeps functions as they are, so the clones of a model share it.
"""

from __future__ import annotations

import threading

import torch

MARKER_ATTR = "hopfield_attn1_marker"


class Attn1Marker(threading.local):
    """Which transformer block's attn1 is running now (None between calls), and its input X, in
    this thread: newer ComfyUI's MultiGPU CFG split runs the cond and uncond model calls at once
    on two threads, where one thread's mark would place the other's calls (its attn2 taken for
    attn1, its attn1 for attn2) and hand it the other's X."""

    def __init__(self):
        self.key = None
        self.x = None

    def is_attn1(self, options: dict) -> bool:
        key = self.key  # one read: a thread's attribute costs four times a slot's
        return key is not None and key == block_key(options)


def block_key(options: dict) -> tuple:
    return tuple(options.get("block") or ()), options.get("block_index", 0)


def installed_marker(model_patcher) -> Attn1Marker | None:
    """The marker an attn1 patch of ours on ``model_patcher`` carries (None: none yet)."""
    patches = model_patcher.model_options.get("transformer_options", {}).get("patches", {})
    for patch in patches.get("attn1_patch", ()):
        marker = getattr(patch, MARKER_ATTR, None)
        if marker is not None:
            return marker
    return None


def unet_attn1_marker(model_patcher) -> Attn1Marker:
    """The marker on ``model_patcher``, installing its two patches once per model lineage."""
    marker = installed_marker(model_patcher)
    if marker is not None:
        return marker
    marker = Attn1Marker()

    def mark_attn1(n, context_attn1, value_attn1, extra_options, **kwargs):
        marker.key = block_key(extra_options)
        marker.x = value_attn1 if value_attn1 is not None else n  # what to_v will project
        return n, context_attn1, value_attn1

    def unmark_attn1(n, extra_options, **kwargs):
        marker.key = marker.x = None  # also drops the reference to X
        return n

    setattr(mark_attn1, MARKER_ATTR, marker)
    model_patcher.set_model_attn1_patch(mark_attn1)
    model_patcher.set_model_attn1_output_patch(unmark_attn1)
    return marker


def take_block_input(marker: Attn1Marker, options: dict):
    """X [B, L, C] of the attn1 call described by ``options``; raises if it was not captured."""
    if not marker.is_attn1(options) or marker.x is None:
        raise RuntimeError(
            "the block input of this attention layer was not captured (another node replaced "
            "or reshaped attn1 here?); use the value space/basis instead"
        )
    return marker.x


def effective_weight(linear, like):
    """(weight, bias) of a Linear layer as it really applies them to inputs like ``like``: fp8
    storage, low-VRAM offload and LoRA weight functions (comfy.ops), scaled-fp8 checkpoints,
    the quantised layers of newer ComfyUI (fp8, int8, nvfp4, ...; AWQ input smoothing
    included) and layers that cast themselves (GGUF). W_v for the input space."""
    own_cast = getattr(linear, "cast_bias_weight", None)
    if callable(own_cast):  # quantised layers from other packs bring their own cast
        weight, bias = own_cast(like)[:2]
    elif hasattr(linear, "weight_function"):  # every comfy.ops layer
        import comfy.ops

        weight, bias = comfy.ops.cast_bias_weight(linear, like)[:2]
    else:
        weight = linear.weight.to(like)
        bias = linear.bias.to(like) if linear.bias is not None else None
    if type(weight).dequantize is not torch.Tensor.dequantize:
        # newer ComfyUI's QuantizedTensor (packed data and its scales): the retrieval over X
        # wants the values it stands for, in plain float ops
        weight = weight.dequantize().to(like.dtype)
    scale = getattr(linear, "scale_weight", None)  # scaled fp8 stores W / scale
    if isinstance(scale, torch.Tensor):
        weight = weight * scale.to(weight)
    smoothing = getattr(linear, "pre_quant_scale", None)  # AWQ: the layer applies (x * s) W^T
    if isinstance(smoothing, torch.Tensor):
        weight = weight * smoothing.to(weight)  # = x (W diag(s))^T: s scales W's columns
    return weight, bias
