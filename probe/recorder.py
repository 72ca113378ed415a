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

In a compiled model (TorchCompileModel) the measurement is traced into the graph and the rest
runs when the graph does (traced.py).
"""

from __future__ import annotations

import torch

from ..families import adapter_for
from ..hook.call import AttentionCall, Steering
from ..hook.layers import select_layers
from ..hook.override import add_observer, install_attention_hook
from ..hook.schedule import (
    require_host_sigma,
    sigma_window,
    whole_run,
    window_bounds,
)
from ..hopfield import fused_triton
from ..hopfield.input_space import channel_subset, input_retrieval, steered_input_retrieval
from ..hopfield.stability import layer_stability
from ..hopfield.stability_triton import host_layout, ready_plan, row_addresses, rows_layout
from .registry import (
    ALL_ROWS,
    Measurement,
    ProbeHandle,
    ProbeRun,
    ProbeSettings,
    ProbeState,
    Slot,
    chunk_placements,
    new_run,
    register,
)
from .traced import record_in_graph

WRAPPER_KEY = "hopfield_circulation_probe"


def patch_probe(model_patcher, settings: ProbeSettings):
    """(probed clone, ProbeHandle). Nothing about the model's output changes."""
    adapter = adapter_for(model_patcher)
    adapter.require_space(settings.basis)
    m = model_patcher.clone()
    sigma_start, sigma_end = sigma_window(m, settings.start_percent, settings.end_percent)
    window = window_bounds(sigma_start, sigma_end)
    install_attention_hook(m, adapter=adapter)
    windowed = not whole_run(settings.start_percent, settings.end_percent)
    if windowed:
        require_host_sigma(m, window)  # the window is decided per model call, on the host
    selected = select_layers(settings.layers, adapter.layer_map)
    if settings.basis == "value":
        basis = _value_basis
    else:
        basis = _input_basis(adapter.input_space(m), settings.channels,
                             torch.device(m.load_device))
    state = register(adapter.name, adapter.layer_map, settings)
    labels = settings.cfg_labels

    def record_stability(call: AttentionCall, out: torch.Tensor,
                         steering: Steering | None) -> None:
        if call.layer.index not in selected:
            return
        if windowed and not call.step_info.in_window(window):
            return
        wanted = [(branch, call.cond_or_uncond.index(branch)) for branch in labels
                  if branch in call.cond_or_uncond]
        if not wanted:
            return
        if torch.compiler.is_compiling():  # a trace: measure in the graph, keep as it runs
            packed = [_measure(call, out, steering, rows, basis)
                      for rows, _ in chunk_placements(call.batch, len(call.cond_or_uncond),
                                                      wanted)]
            return record_in_graph(state.probe_id, call, steering, wanted, packed)
        run = state.current
        if run is None:
            return
        chunks = run.sampler_chunks(call.model_call, wanted)
        if chunks:
            if steering is not None:
                run.steering_spaces.add(steering.space)
            _record(run, call, out, steering, chunks, basis)

    add_observer(m, record_stability)
    fused_triton.settle(torch.device(m.load_device))  # what a compiled graph's trace reads
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
            return output
        finally:
            try:  # also for a run stopped early: what it recorded is kept
                run.fold()
                run.place_steps()  # the run is over: reading its sigmas now costs it no time
            finally:
                run.finished = True
                state.current = outer

    return bracket_run


def _value_basis(call: AttentionCall, out: torch.Tensor, steering, rows: slice) -> torch.Tensor:
    """The value basis: the attention output the model used (``out``, in the host's layout),
    d channels per head."""
    return _rows(call.from_host(out), rows)


def _rows(t: torch.Tensor, rows: slice) -> torch.Tensor:
    """``t[rows]``; the whole batch as it is (a slice is an op, in every probed call)."""
    return t if rows == ALL_ROWS else t[rows]


def _input_basis(input_space, channels: int, device: torch.device):
    """The input basis: the retrieval over the block input X (a fixed subset of its channels).

    The subsets are made on the sampling device when the model is patched, one per block
    width: a compile trace could not make them (their generator breaks the graph), and a copy
    to the device in every probed call would wait for it."""
    subsets: dict = {}  # (C, device) -> indices, made once: no host-to-device copy per call
    for width in input_space.channel_widths():
        subset = channel_subset(width, channels)
        subsets[(width, device)] = subset.to(device) if subset is not None else None

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


_PLACEMENTS: dict = {}  # (batch, chunk count, chunks) -> chunk_placements' answer


def _placements(call: AttentionCall, chunks: list[tuple[int, int]]) -> tuple:
    """chunk_placements for this eager call, worked out once per batch and chunks."""
    key = (call.host_q.shape[0], len(call.cond_or_uncond), *chunks)
    found = _PLACEMENTS.get(key)
    if found is None:
        if len(_PLACEMENTS) >= 256:  # a few per CFG layout: bounded all the same
            _PLACEMENTS.clear()
        found = _PLACEMENTS[key] = tuple(chunk_placements(key[0], key[1], chunks))
    return found


def _measure(call: AttentionCall, out: torch.Tensor, steering: Steering | None, rows: slice,
             basis, run: ProbeRun | None = None) -> torch.Tensor | Slot:
    """The packed measures (LayerStability.packed) of ``rows`` of one call. With ``run``, a
    value-basis call whose layout is planned launches on the host's q, k and output as they
    are, or at their rows' addresses (where the [B, H, L, d] views of the rows take three ops
    each, a slice one: the planned launches read addresses, at the same strides), and writes
    into a slot of the run's output blocks (ProbeRun.next_slot: no allocation per call).
    Without, or where it can't, it calls layer_stability (on CUDA its kernels' registered op
    in a compile trace, which is never given the run; elsewhere the torch ops)."""
    plan_key = None
    if run is not None and basis is _value_basis:
        views = (call.heads, call.host_heads_first, call.output_heads_first)
        q, k = call.host_q, call.host_k
        whole = rows == ALL_ROWS
        plan_key = host_layout(q, k, out, *views) if whole else \
            rows_layout(rows, q, k, out, *views)
        plan = ready_plan(plan_key)
        if plan is not None:
            slot = run.next_slot((call.layer.index, rows.start, rows.stop, plan), plan.out_shape,
                                 plan.torch_device)
            addresses = (q.data_ptr(), k.data_ptr(), out.data_ptr())
            if not whole:
                addresses = row_addresses(rows, q, k, out, addresses)
            if plan.launch_into(*addresses, slot.address):
                return slot
    return layer_stability(_rows(call.q, rows), _rows(call.k, rows),
                           basis(call, out, steering, rows), plan_key).packed


def _record(run: ProbeRun, call: AttentionCall, out: torch.Tensor, steering: Steering | None,
            chunks: list[tuple[int, int]], basis) -> None:
    """Measure the chosen CFG chunks of one call and keep the result for the run's sums, maps
    and series (ProbeRun.fold adds them up later: no tensor op here beyond the measurement)."""
    layer = call.layer
    latent = call.latent_shape
    grid = call.token_grid if latent is not None else None  # maps need the latent's grid
    if grid is not None:
        run.latent_shape = tuple(latent)
    evaluation = run.evaluation
    for rows, placed in _placements(call, chunks):
        packed = _measure(call, out, steering, rows, basis, run)
        run.record(Measurement(layer.index, layer.kind, layer.group, grid, call.text_tokens,
                               placed, call.step, call.sigma, evaluation, packed))
