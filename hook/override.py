"""The pack's one attention hook: ComfyUI's ``optimized_attention_override``, model-scoped.

``install_attention_hook(clone, handler)`` wraps whatever override the clone already carries
(another pack's, or one of ours from an earlier node) and:

1. computes the baseline exactly as the host would (the previous override, else ``func``), so
   an untouched call is bit for bit the unpatched model;
2. for self-attention calls the model's family adapter can place (layer, token grid), lets
   ``handler`` replace the output; masked, cross-attention or unplaceable calls are returned
   untouched;
3. if it is the outermost of our hooks in this call, passes the final output (in the host's
   layout, as returned) and the steering applied to it to the observers registered on the
   model (the Stability Probe), so they see what the model really used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..families import FamilyAdapter, adapter_for, reference_keys
from . import intact
from .call import (
    OBSERVERS_KEY,
    SCOPE_KEY,
    AttentionCall,
    CallScope,
    Observer,
    Steering,
    heads_first,
)
from .schedule import UNREAD, ModelCall, ensure_step_wrapper, new_patch_key, running_call


class HostBaseline:
    """The host's own output for this call, computed at most once and only when asked for.

    ``chained``: another override was installed before ours; it must then see every call, so
    the baseline is never skipped.
    """

    __slots__ = ("previous", "func", "args", "kwargs", "chained", "_output")

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
        return out if self.kwargs.get("skip_output_reshape") else heads_first(out, heads)


@dataclass(frozen=True)
class Steered:
    """A handler's result: the new output and what was applied to get it. ``out`` is
    [B, H, L, d], or already in the host's layout with ``host_layout`` (AttentionCall.to_host).
    ``steering`` may be a function that makes it: it is asked for only where an observer reads
    it, so a call nobody observes makes no views of the coefficients it applied."""

    out: torch.Tensor
    steering: Steering | Callable[[], Steering]
    host_layout: bool = False

    def applied(self) -> Steering:
        steering = self.steering
        return steering if isinstance(steering, Steering) else steering()


# handler(call, baseline) -> Steered, or None to keep the baseline
Handler = Callable[[AttentionCall, HostBaseline], "Steered | None"]


def _head_width(t: torch.Tensor, heads: int) -> int:
    """Features per head of a [B, L, H*d] tensor, or of [B, L, H, d] / [B, H, L, d] (SD3 passes
    q and k in the first layout and v in the second)."""
    return t.shape[-1] // heads if t.ndim == 3 else t.shape[-1]


def _attends_everywhere(mask: torch.Tensor) -> bool:
    """A mask that changes nothing: all True, or an all-zero additive bias. Reading it waits for
    the device, so it is asked only of placed self-attention calls that carry a mask (Qwen-Image
    calls the masked entry point; Flux gets one from Redux's attention bias); unmasked calls,
    the usual case, pay nothing."""
    if mask.dtype == torch.bool:
        return bool(mask.all())
    return mask.is_floating_point() and not bool(mask.any())


def restricted(args: tuple, kwargs: dict) -> bool:
    """Whether the call carries a mask that restricts attention."""
    mask = args[4] if len(args) > 4 else kwargs.get("mask")
    return mask is not None and not _attends_everywhere(mask)


def _square_queries(adapter: FamilyAdapter, options: dict, q: torch.Tensor, k: torch.Tensor,
                    n_q: int, n_k: int, host_heads_first: bool) -> torch.Tensor | None:
    """For a call whose queries and keys differ in number: its queries with those of the
    references whose keys a cache supplies (FluxKVCache: families/reference_keys.py), or None
    for a cross-attention, or for a self-attention another patch changed (named once)."""
    if n_q > n_k:
        return None  # a cross-attention over fewer keys (a UNet's attn2, another pack's)
    if host_heads_first and options.get(reference_keys.REFERENCE_TOKENS_KEY):
        full_q = reference_keys.with_cached_queries(options, q, k)
        if full_q is not None:
            return full_q
    layer = adapter.self_attention_layer(options)
    if layer is not None:  # its queries merged or tiled by another patch (ToMe, HyperTile)
        adapter.note_unreachable(layer, n_q, n_k)
    return None


def fewer_keys(args: tuple, kwargs: dict) -> bool:
    """Whether the call has fewer keys than queries: a cross-attention, never placed
    (``place_call``), asked first so that it costs the hook no more than this."""
    if len(args) < 2:
        return False
    axis = -2 if kwargs.get("skip_reshape") else 1
    return args[0].shape[axis] > args[1].shape[axis]


def place_call(adapter: FamilyAdapter, args: tuple, kwargs: dict,
               running: ModelCall | None) -> AttentionCall | None:
    """The self-attention call in SDPA layout, or None for calls this pack leaves alone
    (cross-attention, or not placeable in the model by its family adapter); whether a mask
    restricts it is asked apart (``restricted``). ``running``: the model call it belongs to
    (schedule.ModelCall; None outside one: the step unread, the CFG chunks from the call's
    options). A call whose keys end with cached references is placed as the square call with
    their queries (``AttentionCall.query_rows``: the rows the host asked for)."""
    q, k, v = args[:3]
    heads = args[3] if len(args) > 3 else kwargs.get("heads")
    options = kwargs.get("transformer_options") or {}
    if heads is None:
        return None
    # Tokens and widths from the host's own layout first: cross-attention (every other call
    # in a UNet) is turned away before any view is made.
    host_heads_first = bool(kwargs.get("skip_reshape"))
    token_axis = -2 if host_heads_first else 1
    n_q, n_k = q.shape[token_axis], k.shape[token_axis]
    query_rows = None
    if n_q != n_k:
        q = _square_queries(adapter, options, q, k, n_q, n_k, host_heads_first)
        if q is None:
            return None
        query_rows = n_q
    if _head_width(v, heads) != _head_width(q, heads):
        return None
    if host_heads_first and query_rows is None:
        references = options.get(reference_keys.REFERENCE_TOKENS_KEY)
        if references:  # a cache may keep their keys: keep their queries (reference_keys.py)
            reference_keys.remember(options, q, reference_keys.reference_tokens(options))
    latent_shape = running.latent_shape if running is not None else None
    placement = adapter.place(options, n_k, n_k, latent_shape)
    if placement is None:
        return None
    if running is not None:
        step, chunks = running.step, running.cond_or_uncond
    else:
        step, chunks = UNREAD, tuple(options.get("cond_or_uncond") or (0,))
    return AttentionCall(  # [B, H, L, d] views of q, k, v made on first use
        q, k, v, heads, placement.layer, step, chunks,
        placement.text_tokens, placement.token_grid, options,
        host_heads_first=host_heads_first,
        output_heads_first=bool(kwargs.get("skip_output_reshape")),
        latent_shape=latent_shape, query_rows=query_rows,
    )


def install_attention_hook(model_patcher, handler: Handler | None = None,
                           adapter: FamilyAdapter | None = None) -> FamilyAdapter:
    """Install our override on ``model_patcher`` (a clone), chaining the one it already has.

    ``handler=None`` installs a pass-through hook whose only job is to feed the observers
    (``add_observer``). Also installs, once per model, what places the calls: the step wrapper
    (schedule.py) and whatever the family adapter needs. Returns the model's family adapter
    (``adapter`` when given; raises UnsupportedModelError, a ValueError, for other families).
    """
    adapter = adapter or adapter_for(model_patcher)
    adapter.install(model_patcher)
    options = model_patcher.model_options.setdefault("transformer_options", {})
    previous = options.get(intact.OVERRIDE_KEY)
    patch = new_patch_key(model_patcher)

    def hopfield_attention_override(func, *args, **kwargs):
        running = running_call()
        tracing = torch.compiler.is_compiling()
        if tracing:
            # Read in a trace, the model call's patch number guards the graph on this model's
            # patches of ours (schedule.ModelCall); the latest of them tells intact it ran
            latest = running is not None and running.patch == patch
        else:
            latest = False
            if running is not None:
                running.hook_ran = True
        if fewer_keys(args, kwargs):  # a cross-attention (every other call of a UNet): the
            # host's, at once (place_call turns it away; no observer sees it)
            return func(*args, **kwargs) if previous is None else \
                previous(func, *args, **kwargs)
        call_options = kwargs.get("transformer_options")
        # Only a model with observers needs the call's scope: the outermost of our hooks makes
        # it, and hands it to the hooks it chains in a copy of the call's options. A write
        # into the call's own options would be a side effect a compiled graph must replay,
        # and inside SD3's joint blocks, which a compile trace runs through the host's
        # checkpoint when a block replace runs them (ours publishes the block index:
        # families/mmdit.py), it cannot: a graph break in every block
        observers = call_options.get(OBSERVERS_KEY) if call_options is not None else None
        scope = call_options.get(SCOPE_KEY) if observers else None
        outermost = bool(observers) and scope is None
        if outermost:
            scope = CallScope()
            if previous is not None:
                kwargs = {**kwargs, "transformer_options": {**call_options, SCOPE_KEY: scope}}
        baseline = HostBaseline(previous, func, args, kwargs)
        if handler is None and not outermost:
            return baseline.output()
        call = place_call(adapter, args, kwargs, running)
        if call is None:
            return baseline.output()
        if not tracing:
            if running is not None:
                running.placed = True
        elif latest and call.layer.index == adapter.first_reachable():
            intact.mark_run_in_graph()  # once per graph: each op costs host time
        if restricted(args, kwargs):
            return baseline.output()
        if call.query_rows is not None:  # the square call, its cached references' rows too
            return _square_call(call, handler, baseline, HostBaseline(
                previous, func, (call.host_q, *args[1:]), kwargs), scope, observers, outermost)
        steered = handler(call, baseline) if handler is not None else None
        if steered is None:
            out = baseline.output()
        else:
            out = steered.out if steered.host_layout else call.to_host(steered.out)
            if scope is not None:
                scope.steering = steered.applied()
        if outermost:  # the output as returned: views cost host time in every call
            for observer in observers:
                observer(call, out, scope.steering)
        return out

    intact.mark(hopfield_attention_override)
    options[intact.OVERRIDE_KEY] = hopfield_attention_override
    ensure_step_wrapper(model_patcher)
    return adapter


def _square_call(call: AttentionCall, handler: Handler | None, host: HostBaseline,
                 square: HostBaseline, scope: CallScope | None, observers, outermost: bool):
    """A call whose keys end with cached references (``call.query_rows``): steered and
    observed as the square call with their queries (``square`` its host output), the rows the
    host asked for handed back."""
    steered = handler(call, square) if handler is not None else None
    if steered is None:
        if not outermost:
            return host.output()
        out = square.output()
    else:
        out = steered.out if steered.host_layout else call.to_host(steered.out)
        if scope is not None:
            scope.steering = steered.applied()
    if outermost:
        for observer in observers:
            observer(call, out, scope.steering)
    if steered is None and (scope is None or scope.steering is None):
        return host.output()  # none of our hooks steered it: the host's own call, bit for bit
    return call.host_rows(out)  # the rows the host asked for


def add_observer(model_patcher, observer: Observer) -> None:
    """Register a plain function ``observer(call, out, steering)``; install a pass-through hook
    first."""
    options = model_patcher.model_options.setdefault("transformer_options", {})
    options[OBSERVERS_KEY] = [*options.get(OBSERVERS_KEY, []), observer]
