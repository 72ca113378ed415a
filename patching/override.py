"""The pack's one attention hook: ComfyUI's ``optimized_attention_override``, model-scoped.

``install_attention_hook(clone, handler)`` wraps whatever override the clone already carries
(another pack's, or one of ours from an earlier node) and:

1. computes the baseline exactly as the host would (the previous override, else ``func``), so
   an untouched call is bit for bit the unpatched model;
2. for self-attention calls it can place (layer, step, branch), lets ``handler`` replace the
   output; masked, cross-attention or unplaceable calls are returned untouched (UNet attn1 is
   told from attn2 by marker patches around attn1, not by shapes: see block_input.py);
3. if it is the outermost of our hooks in this call, passes the final output to the observers
   registered on the model (the Stability Probe), so they see what the model really used.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .block_input import Attn1Marker, unet_attn1_marker
from .call import ACTIVE_KEY, OBSERVERS_KEY, AttentionCall, LayerId, Steering
from .family import layer_map_of
from .layers import LayerMap
from .schedule import LATENT_SHAPE_KEY, STEP_KEY, ensure_step_wrapper

OVERRIDE_KEY = "optimized_attention_override"
BLOCK_KEY = "hopfield_circulation_block"  # SD3: the joint block index, published per block
STEERING_KEY = "hopfield_circulation_steering"  # set by the circulation hook for observers


class HostBaseline:
    """The host's own output for this call, computed at most once and only when asked for.

    ``chained``: another override was installed before ours; it must then see every call, so
    the baseline is never skipped.
    """

    def __init__(self, previous, func, args, kwargs):
        self.previous, self.func, self.args, self.kwargs = previous, func, args, kwargs
        self.chained = previous is not None
        self._output = None

    def output(self) -> torch.Tensor:
        if self._output is None:
            if self.previous is not None:
                self._output = self.previous(self.func, *self.args, **self.kwargs)
            else:
                self._output = self.func(*self.args, **self.kwargs)
        return self._output

    def heads(self, heads: int) -> torch.Tensor:
        out = self.output()
        return out if self.kwargs.get("skip_output_reshape") else _heads_first(out, heads)


# handler(call, baseline) -> new output [B, H, L, d], or None to keep the baseline
Handler = Callable[[AttentionCall, HostBaseline], "torch.Tensor | None"]


def _heads_first(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, H*d] or [B, L, H, d] -> [B, H, L, d] (a view)."""
    if t.ndim == 3:
        t = t.unflatten(-1, (heads, -1))
    return t.transpose(1, 2)


def _place_unet(options: dict, layer_map: LayerMap, marker: Attn1Marker | None, n_q: int,
                n_k: int):
    block, shape = options.get("block"), options.get("activations_shape")
    if block is None or shape is None or marker is None or not marker.is_attn1(options):
        return None, None  # attn2 (cross-attention), or a call outside a transformer block
    h, w = int(shape[-2]), int(shape[-1])
    if not n_q == n_k == h * w:  # tokens merged or tiled by another patch (ToMe, HyperTile)
        return None, None
    layer = layer_map.by_key.get((block[0], block[1], options.get("block_index", 0)))
    return layer, (h, w)


def _mmdit_block_index(options: dict) -> int | None:
    index = options.get(BLOCK_KEY)
    if index is None and options.get("block_type") == "double":  # hosts that publish it
        index = options.get("block_index")
    return index


def _place_mmdit(options: dict, layer_map: LayerMap, n_q: int):
    index = _mmdit_block_index(options)
    latent = options.get(LATENT_SHAPE_KEY)
    if index is None or latent is None:
        return None, None, 0
    layer = layer_map.by_key.get((index,))
    if layer is None:
        return None, None, 0
    patch = layer_map.patch_size
    grid = (math.ceil(latent[-2] / patch), math.ceil(latent[-1] / patch))  # padded to patches
    image_tokens = grid[0] * grid[1]
    if n_q == image_tokens:  # SD3.5-M's extra image-only self-attention in the same block
        return LayerId("sd3", layer.index, layer.group, "image_self"), grid, 0
    if n_q < image_tokens:
        return None, None, 0
    return layer, grid, n_q - image_tokens  # [text; image]: the context comes first


def parse_call(layer_map: LayerMap, args: tuple, kwargs: dict,
               attn1_marker: Attn1Marker | None = None) -> AttentionCall | None:
    """The self-attention call in SDPA layout, or None for calls this pack leaves alone
    (masked, cross-attention, or not placeable in the model). UNets need ``attn1_marker``."""
    q, k, v = args[:3]
    heads = args[3] if len(args) > 3 else kwargs.get("heads")
    mask = args[4] if len(args) > 4 else kwargs.get("mask")
    options = kwargs.get("transformer_options") or {}
    if heads is None or mask is not None:
        return None
    if kwargs.get("skip_reshape"):
        qh, kh, vh = q, k, v
    else:
        qh, kh, vh = (_heads_first(t, heads) for t in (q, k, v))
    n_q, n_k = qh.shape[-2], kh.shape[-2]
    if n_q != n_k or vh.shape[-1] != qh.shape[-1]:
        return None
    text_tokens = 0
    if layer_map.family == "sdxl":
        layer, grid = _place_unet(options, layer_map, attn1_marker, n_q, n_k)
    else:
        layer, grid, text_tokens = _place_mmdit(options, layer_map, n_q)
    if layer is None:
        return None
    step = options.get(STEP_KEY)
    return AttentionCall(
        q=qh,
        k=kh,
        v=vh,
        heads=heads,
        layer=layer,
        sigma=step.sigma if step else None,
        percent=step.percent if step else None,
        step=step.step if step else None,
        model_call=step.model_call if step else -1,
        cond_or_uncond=list(options.get("cond_or_uncond") or [0]),
        text_tokens=text_tokens,
        token_grid=grid,
        transformer_options=options,
    )


def _to_host_layout(out: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """[B, H, L, d] back to the layout the host's attention function returns ([B, L, H*d])."""
    if kwargs.get("skip_output_reshape"):
        return out
    return out.transpose(1, 2).flatten(2)


def _notify(observers: list, call: AttentionCall, out_heads: torch.Tensor) -> None:
    call.steering = call.transformer_options.get(STEERING_KEY)
    for observer in observers:
        observer(call, out_heads)


def install_attention_hook(model_patcher, handler: Handler | None = None) -> LayerMap:
    """Install our override on ``model_patcher`` (a clone), chaining the one it already has.

    ``handler=None`` installs a pass-through hook whose only job is to feed the observers
    (``add_observer``). Also installs, once per model, what places the calls: the step wrapper
    (schedule.py), on UNets the attn1 marker patches (block_input.py), on SD3 the block-index
    replaces. Returns the model's layer map (raises UnsupportedModelError, a ValueError, for
    other model families).
    """
    layer_map = layer_map_of(model_patcher)
    marker = unet_attn1_marker(model_patcher) if layer_map.family == "sdxl" else None
    options = model_patcher.model_options.setdefault("transformer_options", {})
    previous = options.get(OVERRIDE_KEY)

    def hopfield_attention_override(func, *args, **kwargs):
        call_options = kwargs.get("transformer_options")
        outermost = call_options is not None and not call_options.get(ACTIVE_KEY)
        if outermost:
            call_options[ACTIVE_KEY] = True
        try:
            baseline = HostBaseline(previous, func, args, kwargs)
            observers = call_options.get(OBSERVERS_KEY) if outermost else None
            if handler is None and not observers:
                return baseline.output()
            call = parse_call(layer_map, args, kwargs, marker)
            if call is None:
                return baseline.output()
            out_heads = handler(call, baseline) if handler is not None else None
            if out_heads is None:
                out, out_heads = baseline.output(), None
            else:
                out = _to_host_layout(out_heads, kwargs)
            if observers:
                _notify(observers, call, baseline.heads(call.heads) if out_heads is None
                        else out_heads)
            return out
        finally:
            if outermost:
                call_options.pop(ACTIVE_KEY, None)
                call_options.pop(STEERING_KEY, None)

    options[OVERRIDE_KEY] = hopfield_attention_override
    ensure_step_wrapper(model_patcher)
    if layer_map.family == "sd3":
        _publish_block_indices(model_patcher, len(layer_map.layers))
    return layer_map


def add_observer(model_patcher, observer) -> None:
    """Register a plain function ``observer(call, out)``; install a pass-through hook first."""
    options = model_patcher.model_options.setdefault("transformer_options", {})
    options[OBSERVERS_KEY] = [*options.get(OBSERVERS_KEY, []), observer]


def record_steering(call: AttentionCall, steering: Steering) -> None:
    call.transformer_options[STEERING_KEY] = steering


def _block_index_patch(index: int, previous):
    """A dit double_block replace that publishes the block index, then runs the block as before."""

    def publish_block_index(args, extra, **kwargs):
        args = dict(args)
        args["transformer_options"] = {**args["transformer_options"], BLOCK_KEY: index}
        if previous is not None:
            return previous(args, extra, **kwargs)
        return extra["original_block"](args)

    publish_block_index.hopfield_block_index = index
    return publish_block_index


def _publish_block_indices(model_patcher, depth: int) -> None:
    options = model_patcher.model_options["transformer_options"]
    replaces = options.get("patches_replace", {}).get("dit", {})
    for i in range(depth):
        previous = replaces.get(("double_block", i))
        if getattr(previous, "hopfield_block_index", None) == i:
            continue  # an earlier node of ours already publishes it
        model_patcher.set_model_patch_replace(
            _block_index_patch(i, previous), "dit", "double_block", i
        )
