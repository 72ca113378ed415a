"""The Stability Probe's recorder: measures every selected self-attention call of a sampling run.

An observer on the pack's attention hook measures each call; an OUTER_SAMPLE wrapper opens a
new ``ProbeRun`` (registry.py) at the start of each sampling run and keeps the sampler's output
with it, so a report can find the run that produced its LATENT.

Only the sampler's own passes are recorded: the first model call of each of the sampler's
model evaluations (its guider's predict_noise, counted by a PREDICT_NOISE wrapper) for each CFG
branch. Guidance nodes (PAG, SAG, SkipLayerGuidance) re-run the model later in the same
evaluation with modified attention; those calls are skipped. (A non-empty ``patches_replace`` is
not used as the hint: IP-Adapter-style packs set attn2 replaces on every pass, and SD3 carries
our own block patches.)

Over the whole run (start 0, end 1) nothing is read on the host while sampling: each
evaluation's sigma stays a device tensor, and the series gets its sigmas and steps in one
transfer when the run ends (ProbeRun.place_steps). A narrower window reads each model call's
sigma (hook/schedule.py), as a circulation's does.
"""

from __future__ import annotations

import torch

from ..families import adapter_for
from ..hook.call import AttentionCall, Steering
from ..hook.layers import select_layers
from ..hook.override import add_observer, install_attention_hook
from ..hook.schedule import (
    LATENT_SHAPE_KEY,
    require_host_sigma,
    sigma_window,
    whole_run,
    window_bounds,
)
from ..hopfield.input_space import channel_subset, input_retrieval, steered_input_retrieval
from ..hopfield.stability import layer_stability
from .registry import (
    LayerKey,
    MapKey,
    ProbeHandle,
    ProbeRun,
    ProbeSettings,
    ProbeState,
    SeriesEntry,
    new_run,
    register,
)

WRAPPER_KEY = "hopfield_circulation_probe"
ALL_ROWS = slice(None)  # a whole-batch measurement


def patch_probe(model_patcher, settings: ProbeSettings):
    """(probed clone, ProbeHandle). Nothing about the model's output changes."""
    adapter = adapter_for(model_patcher)
    adapter.require_space(settings.basis)
    m = model_patcher.clone()
    sigma_start, sigma_end = sigma_window(m, settings.start_percent, settings.end_percent)
    sigma_low, sigma_high = window_bounds(sigma_start, sigma_end)  # in_window's, once
    install_attention_hook(m, adapter=adapter)
    windowed = not whole_run(settings.start_percent, settings.end_percent)
    if windowed:
        require_host_sigma(m)  # the window is decided per model call, on the host
    selected = select_layers(settings.layers, adapter.layer_map)
    if settings.basis == "value":
        basis = _value_basis
    else:
        basis = _input_basis(adapter.input_space(m), settings.channels)
    state = register(adapter.name, adapter.layer_map, settings)
    labels = settings.cfg_labels

    # Recording is bookkeeping on Python objects (the run, its sums, its series): under
    # torch.compile it runs eagerly, outside the traced graph, rather than being traced into
    # guards on every counter (which recompiled the graph at every call).
    @torch.compiler.disable
    def record_stability(call: AttentionCall, out: torch.Tensor,
                         steering: Steering | None) -> None:
        run = state.current
        if run is None or call.layer.index not in selected:
            return
        if windowed and call.sigma is not None and not sigma_low <= call.sigma <= sigma_high:
            return
        # the sampler's evaluation this call belongs to (each model call its own, where
        # sampling bypasses ComfyUI's guider and none was counted)
        evaluation = run.evaluation
        key = evaluation if evaluation is not None else ("call", call.model_call)
        chunks = []
        for branch in labels:
            if branch not in call.cond_or_uncond:
                continue
            first = run.first_call.setdefault((key, branch), call.model_call)
            if first == call.model_call:  # later calls: guidance re-runs (PAG, SAG, SLG)
                chunks.append((branch, call.cond_or_uncond.index(branch)))
        if chunks:
            if steering is not None:
                run.steering_spaces.add(steering.space)
            _record(run, call, out, steering, chunks, basis)

    add_observer(m, record_stability)
    from comfy.patcher_extension import WrappersMP

    m.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, _run_bracket(state))
    m.add_wrapper_with_key(WrappersMP.PREDICT_NOISE, WRAPPER_KEY, _evaluation_counter(state))
    return m, ProbeHandle(state.probe_id, state.family)


def _evaluation_counter(state: ProbeState):
    """PREDICT_NOISE wrapper: each of the sampler's model evaluations starts a new one in the
    current run, with its sigma (a device tensor, not read) and the schedule."""

    def count_evaluation(executor, *args, **kwargs):  # (x, timestep, model_options, seed)
        run = state.current
        if run is not None:
            timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
            options = args[2] if len(args) > 2 else kwargs.get("model_options")
            schedule = (options or {}).get("transformer_options", {}).get("sample_sigmas")
            run.begin_evaluation(timestep, schedule)
        return executor(*args, **kwargs)

    return count_evaluation


def _run_bracket(state: ProbeState):
    """OUTER_SAMPLE wrapper: one ProbeRun per sampling run, closed with the sampler's output."""

    def bracket_run(executor, *args, **kwargs):
        run = new_run(state)
        outer, state.current = state.current, run  # a sampler run inside another one nests
        try:
            output = executor(*args, **kwargs)
            if isinstance(output, torch.Tensor):
                run.output = output.detach().to("cpu", copy=True)
            run.place_steps()  # the run is over: reading its sigmas now costs it no time
            return output
        finally:
            run.finished = True
            state.current = outer

    return bracket_run


def _value_basis(call: AttentionCall, out: torch.Tensor, steering, rows: slice) -> torch.Tensor:
    """The value basis: the attention output the model used, d channels per head."""
    return _rows(out, rows)


def _rows(t: torch.Tensor, rows: slice) -> torch.Tensor:
    """``t[rows]``; the whole batch as it is (a slice is an op, in every probed call)."""
    return t if rows == ALL_ROWS else t[rows]


def _input_basis(input_space, channels: int):
    """The input basis: the retrieval over the block input X (a fixed subset of its channels)."""
    subsets: dict = {}  # (C, device) -> indices, made once: no host-to-device copy per call

    def input_basis(call: AttentionCall, out: torch.Tensor, steering: Steering | None,
                    rows: slice) -> torch.Tensor:
        x = input_space.block_input(call.transformer_options)
        if x.shape[:2] != (call.batch, call.k.shape[-2]):
            raise RuntimeError(
                f"Stability Probe (input basis): attn1's input X {tuple(x.shape)} does not "
                f"match its keys {tuple(call.k.shape)} (another node changes attn1's values); "
                "use basis='value'"
            )
        key = (x.shape[-1], x.device)
        if key not in subsets:
            subset = channel_subset(x.shape[-1], channels)
            subsets[key] = subset.to(x.device) if subset is not None else None
        q, k, x = _rows(call.q, rows), _rows(call.k, rows), _rows(x, rows)
        if steering is None:
            return input_retrieval(q, k, x, subsets[key])
        return _steered(steering, q, k, x, subsets[key], rows)

    return input_basis


def _steered(steering: Steering, q, k, x, subset, rows):
    """A circulation node changed this call: its blend over X's probed channels, with the
    coefficients it applied. Exact for an input-space circulation probed over all channels;
    otherwise the norm is matched over the probed channels, not over the ones the model
    blended: an approximation (docs, report)."""

    def pick(t):  # per-sample coefficients follow the rows; scalars and per-call ones don't
        return t[rows] if isinstance(t, torch.Tensor) and t.shape[0] > 1 else t

    retrieved, blended = steered_input_retrieval(
        q, k, x, pick(steering.alpha), pick(steering.beta), steering.norm_match, subset)
    if steering.active is None:
        return blended
    keep = steering.active[rows].reshape(-1, 1, 1, 1)
    return torch.where(keep, blended, retrieved.to(blended.dtype))


def _record(run: ProbeRun, call: AttentionCall, out: torch.Tensor, steering: Steering | None,
            chunks: list[tuple[int, int]], basis) -> None:
    """Measure the chosen CFG chunks of one call and add them to the run's sums and maps.

    Chunks are views of the batch (no host sync). With several chunks of one branch (area
    conditioning) the first one stands for the sample. When every chunk is wanted (branch
    'both' on a batched CFG call), one measurement covers the whole batch.
    """
    per_chunk = call.batch // len(call.cond_or_uncond)
    parts = [(branch, slice(c * per_chunk, (c + 1) * per_chunk)) for branch, c in chunks]
    whole = _measure(call, out, steering, ALL_ROWS, basis) \
        if len(chunks) == len(call.cond_or_uncond) else None
    for branch, rows in parts:
        if whole is None:
            values, token_map = _measure(call, out, steering, rows, basis)
        else:
            values, token_map = whole[0][:, rows], whole[1][rows]
        _accumulate(run, call, branch, values, token_map)


def _measure(call, out, steering, rows, basis):
    """([4, b] E, r, Align, eta per sample, [b, L] lambda map) of the given rows."""
    stats = layer_stability(_rows(call.q, rows), _rows(call.k, rows),
                            basis(call, out, steering, rows))
    return stats.values(), stats.token_map


def _accumulate(run: ProbeRun, call: AttentionCall, branch: int, values, token_map) -> None:
    key = LayerKey(call.layer.index, call.layer.kind, branch)
    run.sums[key] = run.sums[key] + values if key in run.sums else values
    run.counts[key] = run.counts.get(key, 0) + 1
    run.series.append(SeriesEntry(call.step, call.sigma, call.layer.index, call.layer.kind,
                                  branch, values, run.evaluation))
    latent = call.transformer_options.get(LATENT_SHAPE_KEY)
    if latent is None or call.token_grid is None:
        return
    run.latent_shape = tuple(latent)
    h, w = call.token_grid
    image = call.text_tokens, call.text_tokens + h * w
    if image != (0, token_map.shape[-1]):  # joint attention: the text tokens come first
        token_map = token_map[:, image[0]:image[1]]
    mkey = MapKey(call.layer.group, branch, call.token_grid)
    run.maps[mkey] = run.maps[mkey] + token_map if mkey in run.maps else token_map
    run.map_counts[mkey] = run.map_counts.get(mkey, 0) + 1
