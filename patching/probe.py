"""The Stability Probe's recorder: measures every selected self-attention call of a sampling run.

A probe is an id in a module-level registry (model_options are deep-copied on every clone, so
state can't live there). An OUTER_SAMPLE wrapper opens a new run at the start of each sampling
run and stores the sampler's output with it, so a report can find the run that produced the
LATENT it was given: two samplers sharing one probed model each get their own report.

Only the sampler's own passes are recorded: the first model call at a step for each CFG branch.
Guidance nodes (PAG, SAG, SkipLayerGuidance) re-run the model at the same step with modified
attention; those later calls are skipped. Memory per run: running sums per layer, one map per
block group at latent resolution, and a few scalars per (step, layer) for the saved series.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import dataclass, field

import torch

from ..hopfield.blend import blend_retrievals
from ..hopfield.heatmap import tokens_to_grid
from ..hopfield.skew import skew_scaled_attention
from ..hopfield.stability import channel_subset, layer_stability
from ..hopfield.symmetry import symmetry_index
from .block_input import install_block_input_stash, take_block_input
from .call import AttentionCall
from .family import model_family
from .layers import LayerMap, select_layers
from .override import add_observer, install_attention_hook
from .schedule import LATENT_SHAPE_KEY, in_window, sigma_window

BASES = ("value", "input")
PROBE_BRANCHES = {"cond": (0,), "uncond": (1,), "both": (0, 1)}
BRANCH_NAMES = {0: "cond", 1: "uncond"}
MEASURES = ("energy", "instability", "align", "eta")
RUNS_KEPT = 8
PROBES_KEPT = 32  # each Stability Probe execution registers one; old ones are dropped
WRAPPER_KEY = "hopfield_circulation_probe"


@dataclass(frozen=True)
class ProbeSettings:
    basis: str = "value"
    channels: int = 64
    start_percent: float = 0.0
    end_percent: float = 1.0
    branch: str = "cond"
    layers: str = "all"


@dataclass
class ProbeRun:
    """What one sampling run recorded. Tensors stay on the model's device until reported."""

    number: int
    # (layer index, kind, branch) -> [4, B] sums of MEASURES over recorded steps, and the count
    sums: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    # (group, branch) -> [B, H, W] sum of per-token lambda maps on the latent grid, and count
    maps: dict = field(default_factory=dict)
    map_counts: dict = field(default_factory=dict)
    # (step, sigma, layer index, kind, branch, [4, B] measures) for the saved series
    series: list = field(default_factory=list)
    first_call: dict = field(default_factory=dict)  # (step, branch) -> model call id
    latent_shape: tuple | None = None
    output: torch.Tensor | None = None  # the sampler's result, to match a report's LATENT
    finished: bool = False

    @property
    def recorded(self) -> bool:
        return bool(self.counts)


@dataclass
class ProbeState:
    probe_id: str
    family: str
    layer_map: LayerMap
    settings: ProbeSettings
    runs: deque = field(default_factory=lambda: deque(maxlen=RUNS_KEPT))
    current: ProbeRun | None = None


@dataclass(frozen=True)
class ProbeHandle:
    """The PROBE value that flows to the report node: an id into the registry."""

    probe_id: str
    family: str


_REGISTRY: dict[str, ProbeState] = {}
_REGISTRY_LOCK = threading.Lock()
_IDS = itertools.count()
_RUN_NUMBERS = itertools.count(1)


def probe_state(handle: ProbeHandle) -> ProbeState:
    state = _REGISTRY.get(handle.probe_id)
    if state is None:
        raise RuntimeError(
            "this probe handle is stale (ComfyUI was restarted); run the graph again"
        )
    return state


def validate(settings: ProbeSettings) -> None:
    if settings.basis not in BASES:
        raise ValueError(f"basis must be one of {BASES}, got {settings.basis!r}")
    if settings.branch not in PROBE_BRANCHES:
        raise ValueError(f"branch must be one of {list(PROBE_BRANCHES)}, got {settings.branch!r}")
    if settings.channels < 0:
        raise ValueError(f"channels must be >= 0 (0 = all), got {settings.channels}")


def patch_probe(model_patcher, settings: ProbeSettings):
    """(probed clone, ProbeHandle). Nothing about the model's output changes."""
    validate(settings)
    family = model_family(model_patcher)
    if settings.basis == "input" and family != "sdxl":
        raise ValueError(
            "basis='input' needs the block input X of a UNet self-attention layer (SDXL); SD3's "
            "joint attention has no single X. Use basis='value'."
        )
    m = model_patcher.clone()
    sigma_start, sigma_end = sigma_window(m, settings.start_percent, settings.end_percent)
    layer_map = install_attention_hook(m)
    selected = select_layers(settings.layers, layer_map)
    stash = install_block_input_stash(m) if settings.basis == "input" else None
    with _REGISTRY_LOCK:
        probe_id = f"probe-{next(_IDS)}"
        state = ProbeState(probe_id, family, layer_map, settings)
        _REGISTRY[probe_id] = state
        while len(_REGISTRY) > PROBES_KEPT:  # bounded memory over a long session
            _REGISTRY.pop(next(iter(_REGISTRY)))
    branches = PROBE_BRANCHES[settings.branch]

    def record_stability(call: AttentionCall, out: torch.Tensor) -> None:
        run = state.current
        if run is None or call.layer.index not in selected:
            return
        if call.sigma is not None and not in_window(call.sigma, sigma_start, sigma_end):
            return
        per_chunk = call.batch // len(call.cond_or_uncond)
        for branch in branches:
            if branch not in call.cond_or_uncond:
                continue
            key = (call.step, branch)
            first = run.first_call.setdefault(key, call.model_call)
            if first != call.model_call:
                continue  # a guidance re-run (PAG, SAG, SLG) at the same step
            # The branch's chunk of the batch, as a view (no host sync). With several chunks of
            # one branch (area conditioning) the first one stands for the sample.
            chunk = call.cond_or_uncond.index(branch)
            rows = slice(chunk * per_chunk, (chunk + 1) * per_chunk)
            _record(run, state, call, out[rows], rows, branch, stash)

    add_observer(m, record_stability)
    m.add_wrapper_with_key(_outer_sample_type(), WRAPPER_KEY, _run_bracket(state))
    return m, ProbeHandle(probe_id, family)


def _outer_sample_type():
    from comfy.patcher_extension import WrappersMP

    return WrappersMP.OUTER_SAMPLE


def _run_bracket(state: ProbeState):
    """OUTER_SAMPLE wrapper: one ProbeRun per sampling run, closed with the sampler's output."""

    def bracket_run(executor, *args, **kwargs):
        run = ProbeRun(next(_RUN_NUMBERS))
        state.current = run
        state.runs.append(run)
        try:
            output = executor(*args, **kwargs)
            run.output = output.detach().to("cpu", copy=True)
            return output
        finally:
            run.finished = True
            state.current = None

    return bracket_run


def _retrieval(call: AttentionCall, out: torch.Tensor, rows: slice, stash, settings):
    """The retrieval the measures look at, for the selected rows: [b, H, L, m]."""
    if settings.basis == "value":
        return out
    q, k = call.q[rows], call.k[rows]
    x = take_block_input(stash, call.transformer_options)[rows]
    subset = channel_subset(x.shape[-1], settings.channels)
    if subset is not None:
        x = x.index_select(-1, subset.to(x.device))
    x = x.unsqueeze(1).expand(-1, call.heads, -1, -1).to(q.dtype)
    retrieved = torch.nn.functional.scaled_dot_product_attention(q, k, x)
    steering = call.steering
    if steering is None:
        return retrieved
    # A circulation node changed this call: re-derive its blend over X's channels. The norm is
    # matched over the m probed channels, not the value channels the model used: approximate.
    alpha, beta = steering.coefficients()
    def pick(t):  # per-sample coefficients follow the rows; scalars and per-call ones don't
        return t[rows] if isinstance(t, torch.Tensor) and t.shape[0] > 1 else t

    blended = blend_retrievals(retrieved, skew_scaled_attention(q, k, x, pick(alpha)), pick(beta))
    if steering.active is None:
        return blended
    keep = steering.active[rows].reshape(-1, 1, 1, 1)
    return torch.where(keep, blended, retrieved.to(blended.dtype))


def _record(run, state, call, out, rows, branch, stash) -> None:
    q, k = call.q[rows], call.k[rows]
    stats = layer_stability(q, k, _retrieval(call, out, rows, stash, state.settings))
    eta = symmetry_index(q, k).mean(dim=-1).to(stats.align.dtype)
    values = torch.stack([stats.energy, stats.instability, stats.align, eta])  # [4, b]
    key = (call.layer.index, call.layer.kind, branch)
    run.sums[key] = run.sums[key] + values if key in run.sums else values
    run.counts[key] = run.counts.get(key, 0) + 1
    run.series.append((call.step, call.sigma, call.layer.index, call.layer.kind, branch, values))
    latent = call.transformer_options.get(LATENT_SHAPE_KEY)
    if latent is None or call.token_grid is None:
        return
    run.latent_shape = tuple(latent)
    grid_map = tokens_to_grid(stats.token_map, call.token_grid, tuple(latent[-2:]),
                              call.text_tokens)
    for group in (call.layer.group, "all"):
        mkey = (group, branch)
        run.maps[mkey] = run.maps[mkey] + grid_map if mkey in run.maps else grid_map
        run.map_counts[mkey] = run.map_counts.get(mkey, 0) + 1


def find_run(handle: ProbeHandle, latent: torch.Tensor | None) -> ProbeRun:
    """The newest finished run whose output is ``latent``; explains when there is none."""
    state = probe_state(handle)
    finished = [run for run in reversed(state.runs) if run.finished]
    if not finished:
        raise RuntimeError(
            "Stability Report: nothing was recorded. The MODEL from this Stability Probe was "
            "not sampled: connect the probe's MODEL output (or a node downstream of it) to the "
            "sampler that produced this LATENT."
        )
    run = finished[0]
    if latent is not None:
        matching = [r for r in finished if r.output is not None and r.output.shape == latent.shape
                    and torch.equal(r.output, latent.detach().to("cpu"))]
        if not matching:
            raise RuntimeError(
                "Stability Report: this LATENT did not come from a sampler that used this "
                "probe's MODEL (the probe recorded other runs). Feed the report the LATENT of "
                "the sampler that uses the probed model."
            )
        run = matching[0]
    if not run.recorded:
        raise RuntimeError(
            "Stability Report: the probed model was sampled, but no self-attention call was "
            "recorded: the step window (start/end percent) excluded every step, or the layers "
            "or branch selection matched nothing that ran (e.g. branch 'uncond' at CFG 1)."
        )
    return run
