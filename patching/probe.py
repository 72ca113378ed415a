"""The Stability Probe's recorder: measures every selected self-attention call of a sampling run.

A probe is an id in a module-level registry (model_options are deep-copied on every clone, so
state can't live there; the observer and the wrapper are closures, which clones share). An
OUTER_SAMPLE wrapper opens a new run at the start of each sampling run and keeps the sampler's
output with it, so a report can find the run that produced the LATENT it was given: two
samplers sharing one probed model each get their own report, and a re-queued report reads the
run again.

Only the sampler's own passes are recorded: the first model call at a step for each CFG branch.
Guidance nodes (PAG, SAG, SkipLayerGuidance) re-run the model later at the same step with
modified attention; those calls are skipped. (A non-empty ``patches_replace`` is not used as the
hint: IP-Adapter-style packs set attn2 replaces on every pass, and SD3 carries our own block
patches.) Memory per run: running sums per layer, one map per block group at latent resolution,
and four scalars per (step, layer, branch, sample) for the saved series.
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
from ..hopfield.stability import channel_subset, input_retrieval, layer_stability
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
RUNS_KEPT = 16  # sampling runs remembered per probe (for reports of several samplers)
PROBES_KEPT = 32  # each Stability Probe execution registers one; the oldest are dropped
WRAPPER_KEY = "hopfield_circulation_probe"
# A LATENT that is not the sampler's output but within this relative distance of it (the
# x0 prediction "denoised_output" of SamplerCustom(Advanced), which equals the output up to
# rounding when the schedule ends at sigma 0) still finds its run.
APPROXIMATE_MATCH = 1e-3


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
    steering_spaces: set = field(default_factory=set)  # circulation spaces seen on recorded calls
    approximate_match: bool = False  # set by find_run when the LATENT matched only closely

    @property
    def recorded(self) -> bool:
        return bool(self.counts)

    @property
    def steps(self) -> int:
        return len({entry[0] for entry in self.series})


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


def probe_state(handle) -> ProbeState:
    if not isinstance(handle, ProbeHandle):
        raise TypeError(
            f"Stability Report: 'probe' must be the probe output of a Stability Probe, got "
            f"{type(handle).__name__}"
        )
    state = _REGISTRY.get(handle.probe_id)
    if state is None:
        raise RuntimeError(
            "Stability Report: this probe handle is no longer known (ComfyUI was restarted, or "
            f"more than {PROBES_KEPT} probes were created since); run the graph again"
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
    basis = _value_basis if settings.basis == "value" else _input_basis(
        install_block_input_stash(m), settings.channels)
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
        step = call.step if call.step is not None else call.sigma  # a step's own key
        chunks = []
        for branch in branches:
            if branch not in call.cond_or_uncond:
                continue
            first = run.first_call.setdefault((step, branch), call.model_call)
            if first == call.model_call:  # later calls: guidance re-runs (PAG, SAG, SLG)
                chunks.append((branch, call.cond_or_uncond.index(branch)))
        if chunks:
            if call.steering is not None:
                run.steering_spaces.add(call.steering.space)
            _record(run, state, call, out, chunks, basis)

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
        outer, state.current = state.current, run  # a sampler run inside another one nests
        state.runs.append(run)
        try:
            output = executor(*args, **kwargs)
            if isinstance(output, torch.Tensor):
                run.output = output.detach().to("cpu", copy=True)
            return output
        finally:
            run.finished = True
            state.current = outer

    return bracket_run


def _value_basis(call: AttentionCall, out: torch.Tensor, rows: slice) -> torch.Tensor:
    """The value basis: the attention output the model used, d channels per head."""
    return out[rows]


def _input_basis(stash, channels: int):
    """The input basis: the retrieval over attn1's input X (a fixed subset of its channels)."""
    subsets: dict = {}  # (C, device) -> indices, made once: no host-to-device copy per call

    def input_basis(call: AttentionCall, out: torch.Tensor, rows: slice) -> torch.Tensor:
        x = take_block_input(stash, call.transformer_options)
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
        q, k, x = call.q[rows], call.k[rows], x[rows]
        retrieved = input_retrieval(q, k, x, subsets[key])
        return _steered(call, q, k, x, subsets[key], retrieved, rows)

    return input_basis


def _steered(call, q, k, x, subset, retrieved, rows):
    """A circulation node changed this call: re-derive its blend over X's channels. Exact for
    an input-space circulation probed over all channels; otherwise the norm is matched over the
    probed channels, not over the ones the model blended: an approximation (docs, report)."""
    steering = call.steering
    if steering is None:
        return retrieved
    alpha, beta = steering.coefficients()

    def pick(t):  # per-sample coefficients follow the rows; scalars and per-call ones don't
        return t[rows] if isinstance(t, torch.Tensor) and t.shape[0] > 1 else t

    if subset is not None:
        x = x.index_select(-1, subset)
    x = x.unsqueeze(1).expand(-1, call.heads, -1, -1).to(q.dtype)
    blended = blend_retrievals(retrieved, skew_scaled_attention(q, k, x, pick(alpha)), pick(beta))
    if steering.active is None:
        return blended
    keep = steering.active[rows].reshape(-1, 1, 1, 1)
    return torch.where(keep, blended, retrieved.to(blended.dtype))


def _record(run: ProbeRun, state: ProbeState, call: AttentionCall, out: torch.Tensor,
            chunks: list[tuple[int, int]], basis) -> None:
    """Measure the chosen CFG chunks of one call and add them to the run's sums and maps.

    Chunks are views of the batch (no host sync). With several chunks of one branch (area
    conditioning) the first one stands for the sample. When every chunk is wanted (branch
    'both' on a batched CFG call), one measurement covers the whole batch.
    """
    per_chunk = call.batch // len(call.cond_or_uncond)
    if len(chunks) == len(call.cond_or_uncond):
        stats = _measure(call, out, slice(None), basis)
        parts = [(branch, slice(c * per_chunk, (c + 1) * per_chunk)) for branch, c in chunks]
    else:
        stats, parts = None, [(branch, slice(c * per_chunk, (c + 1) * per_chunk))
                              for branch, c in chunks]
    for branch, rows in parts:
        if stats is None:
            values, token_map = _measure(call, out, rows, basis)
        else:
            values, token_map = stats[0][:, rows], stats[1][rows]
        _accumulate(run, call, branch, values, token_map)


def _measure(call, out, rows, basis):
    """([4, b] E, r, Align, eta per sample, [b, L] lambda map) of the given rows."""
    stats = layer_stability(call.q[rows], call.k[rows], basis(call, out, rows))
    values = torch.stack([stats.energy, stats.instability, stats.align, stats.eta])
    return values, stats.token_map


def _accumulate(run, call, branch, values, token_map) -> None:
    key = (call.layer.index, call.layer.kind, branch)
    run.sums[key] = run.sums[key] + values if key in run.sums else values
    run.counts[key] = run.counts.get(key, 0) + 1
    run.series.append((call.step, call.sigma, call.layer.index, call.layer.kind, branch, values))
    latent = call.transformer_options.get(LATENT_SHAPE_KEY)
    if latent is None or call.token_grid is None:
        return
    run.latent_shape = tuple(latent)
    grid_map = tokens_to_grid(token_map, call.token_grid, tuple(latent[-2:]), call.text_tokens)
    for group in (call.layer.group, "all"):
        mkey = (group, branch)
        run.maps[mkey] = run.maps[mkey] + grid_map if mkey in run.maps else grid_map
        run.map_counts[mkey] = run.map_counts.get(mkey, 0) + 1


def _distance(run: ProbeRun, latent: torch.Tensor) -> float:
    """Relative distance between a run's output and a LATENT (inf when they can't match)."""
    if run.output is None or run.output.shape != latent.shape:
        return float("inf")
    if torch.equal(run.output, latent):
        return 0.0
    diff = (run.output.double() - latent.double()).norm()
    return float(diff / latent.double().norm().clamp_min(1e-12))


def find_run(handle: ProbeHandle, latent: torch.Tensor) -> ProbeRun:
    """The newest finished run whose output is ``latent`` (or, failing that, within
    APPROXIMATE_MATCH of it: the sampler's denoised output); explains when there is none."""
    state = probe_state(handle)
    finished = [run for run in reversed(state.runs) if run.finished]
    if not finished:
        raise RuntimeError(
            "Stability Report: nothing was recorded. The MODEL from this Stability Probe was "
            "not sampled: connect the probe's MODEL output (or a node downstream of it) to the "
            "sampler that produced this LATENT."
        )
    if not isinstance(latent, torch.Tensor):
        raise TypeError("Stability Report: 'latent' must be a LATENT from a sampler")
    latent = latent.detach().to("cpu")
    distances = [_distance(run, latent) for run in finished]
    best = min(range(len(finished)), key=distances.__getitem__)  # newest first on ties
    if distances[best] > APPROXIMATE_MATCH:
        raise RuntimeError(
            "Stability Report: this LATENT did not come from a sampler that used this probe's "
            f"MODEL (the probe remembers its last {RUNS_KEPT} sampling runs; none produced "
            "it). Feed the report the LATENT output of the sampler that uses the probed model, "
            "without nodes in between."
        )
    run = finished[best]
    run.approximate_match = distances[best] > 0
    if not run.recorded:
        raise RuntimeError(
            "Stability Report: the probed model was sampled, but no self-attention call was "
            "recorded: the step window (start/end percent) excluded every step, or the layers "
            "or branch selection matched nothing that ran (e.g. branch 'uncond' at CFG 1)."
        )
    return run
