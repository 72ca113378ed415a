"""The probes' registry: what each probe recorded, kept by id, and finding the run behind a LATENT.

A probe is an id in a module-level registry (model_options are deep-copied on every clone, so
state can't live there; the recorder's observer and wrapper are closures, which clones share).
Each sampling run of a probed model is a ``ProbeRun``; a report finds the run that produced the
LATENT it was given, so two samplers sharing one probed model each get their own report, and a
re-queued report reads the run again. Memory per run: sums per layer, one map sum per block
group and layer grid, and four scalars per (step, layer, branch, sample) for the saved series;
while sampling, also the packed results of the calls not folded in yet (FOLD_VALUES).
"""

from __future__ import annotations

import itertools
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..hook.layers import LayerMap
from ..vocabulary import (
    CFG_LABEL,
    FEATURE_SPACES,
    PROBE_BRANCHES,
    FeatureSpace,
    LayerKind,
    ProbeBranch,
    check_choice,
)

RUNS_KEPT = 16  # sampling runs remembered per probe (for reports of several samplers)
PROBES_KEPT = 32  # each Stability Probe execution registers one; the oldest are dropped
# A LATENT that is not the sampler's output but within this relative distance of it (the
# x0 prediction "denoised_output" of SamplerCustom(Advanced), which equals the output up to
# rounding when the schedule ends at sigma 0) still finds its run.
APPROXIMATE_MATCH = 1e-3
# Recorded calls are kept as they came, then folded into the run's sums: folding many at once
# costs a few tensor ops per layer instead of several per call. This bounds the values they
# hold before a fold (64 MB in fp32).
FOLD_VALUES = 1 << 24


@dataclass(frozen=True)
class ProbeSettings:
    """What the Stability Probe node asks for; validates itself like CirculationSettings."""

    basis: FeatureSpace = "value"
    channels: int = 64  # input basis: size of the fixed channel subset (0 = all channels)
    start_percent: float = 0.0
    end_percent: float = 1.0
    branch: ProbeBranch = "cond"
    layers: str = "all"

    def __post_init__(self):
        check_choice("basis", self.basis, FEATURE_SPACES)
        check_choice("branch", self.branch, PROBE_BRANCHES)
        if self.channels < 0:
            raise ValueError(f"channels must be >= 0 (0 = all), got {self.channels}")

    @property
    def cfg_labels(self) -> tuple[int, ...]:
        """The CFG chunk labels recorded: cond, uncond or both."""
        return tuple(CFG_LABEL.values()) if self.branch == "both" else (CFG_LABEL[self.branch],)


class LayerKey(NamedTuple):
    """A recorded layer of one CFG branch: the key of a run's sums."""

    index: int
    kind: LayerKind
    branch: int  # CFG label


class MapKey(NamedTuple):
    """A block group of one CFG branch at one token grid: the key of a run's lambda sums."""

    group: str
    branch: int
    grid: tuple[int, int]  # (h, w) of the layers' image tokens, row-major


class Measurement(NamedTuple):
    """One measured batch of one probed call, as recorded while sampling (ProbeRun.fold sums
    them when the run ends)."""

    index: int  # layer
    kind: LayerKind
    group: str  # the layer's block group
    # (h, w[, tokens per row]) of the image tokens (families/base.Placement); None: no map kept
    grid: tuple[int, ...] | None
    text_tokens: int  # joint attention: the map's image tokens start after these
    chunks: tuple[tuple[int, int, int], ...]  # (CFG branch, first row, end row) in packed
    step: int | None
    sigma: float | None
    evaluation: int | None
    # [rows, 4 + L]: MEASURES, then lambda per token (LayerStability); a Slot where the
    # probe's planned kernels wrote it into one of the run's output blocks
    packed: torch.Tensor | Slot


class Slot(NamedTuple):
    """Where the probe's planned kernels wrote one measurement: a row of one of the run's
    output blocks (ProbeRun.next_slot), at ``address``. A probed call then allocates no
    tensor of its own (an allocation costs host time on the device, in every probed call),
    and a fold finds a layer's measurements side by side in its block: a view, no copy."""

    block: torch.Tensor  # [slots, floats per slot], fp32
    index: int
    shape: tuple[int, int]  # (rows, 4 + L)
    address: int

    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


# A lane's first output block holds as many slots as the run has steps (one per step, two
# for Heun-type samplers: a second block, twice as large), at least SLOTS_FIRST and at most
# SLOTS_MAX; each slot's floats are padded to a multiple of four, so that every slot's
# address is 16-byte aligned, as the kernels' launches take them.
SLOTS_FIRST = 8
SLOTS_MAX = 256


class Lane:
    """A lane's current output block and how many of its slots are given out
    (ProbeRun.next_slot)."""

    __slots__ = ("block", "used", "address", "slot_bytes")

    def __init__(self, block: torch.Tensor, slot_floats: int):
        self.block, self.used = block, 0
        self.address, self.slot_bytes = block.data_ptr(), 4 * slot_floats


def stacked(values: list) -> torch.Tensor:
    """[n, rows, 4 + L]: the measurements' values (tensors or Slots of one shape) in order;
    consecutive slots of one block as one view of it, so that a layer whose block holds them
    all is no copy at all."""
    parts = []
    i = 0
    while i < len(values):
        first = values[i]
        if not isinstance(first, Slot):
            parts.append(first.unsqueeze(0))
            i += 1
            continue
        end = i + 1
        while end < len(values) and isinstance(values[end], Slot) \
                and values[end].block is first.block \
                and values[end].index == first.index + end - i:
            end += 1
        rows = first.block[first.index:first.index + end - i, :first.numel()]
        parts.append(rows.unflatten(1, first.shape))
        i = end
    return parts[0] if len(parts) == 1 else torch.cat(parts)


ALL_ROWS = slice(None)  # a whole-batch measurement


def chunk_placements(batch: int, chunk_count: int, chunks: list[tuple[int, int]]) -> list:
    """[(rows, placed)]: what to measure for the chosen CFG ``chunks`` [(branch, chunk)] of a
    call of ``batch`` rows in ``chunk_count`` chunks, and where each chunk's rows lie in that
    measurement (Measurement.chunks: (branch, first row, end row)).

    When every chunk is wanted (branch 'both' on a batched CFG call), one measurement covers
    the whole batch; otherwise each chunk is measured on its own rows (views: no host sync).
    With several chunks of one branch (area conditioning) the first one stands for the sample.
    """
    per_chunk = batch // chunk_count
    if len(chunks) == chunk_count:
        return [(ALL_ROWS, tuple((branch, c * per_chunk, (c + 1) * per_chunk)
                                 for branch, c in chunks))]
    return [(slice(c * per_chunk, (c + 1) * per_chunk), ((branch, 0, per_chunk),))
            for branch, c in chunks]


class SeriesEntry(NamedTuple):
    """One recorded (step, layer, branch) of the saved series."""

    step: int | None  # None until the run ends (ProbeRun.place_steps), or when unknown
    sigma: float | None
    index: int
    kind: LayerKind
    branch: int
    values: torch.Tensor  # [4, B] MEASURES per sample row of the branch
    evaluation: int | None = None  # the sampler's model evaluation (ProbeRun.evaluation)


@dataclass
class ProbeRun:
    """What one sampling run recorded. Tensors stay on the model's device until reported."""

    number: int
    # [4, B] sums of MEASURES over recorded steps, and their count
    sums: dict[LayerKey, torch.Tensor] = field(default_factory=dict)
    counts: dict[LayerKey, int] = field(default_factory=dict)
    # [B, h * w] sums of per-token lambda maps on each layer grid, and their count: resized to
    # the latent grid and summed over grids (and groups, for "all") when a report reads them
    # (summary.py), since both are linear, rather than in every probed call
    maps: dict[MapKey, torch.Tensor] = field(default_factory=dict)
    map_counts: dict[MapKey, int] = field(default_factory=dict)
    series: list[SeriesEntry] = field(default_factory=list)
    first_call: dict = field(default_factory=dict)  # (evaluation, branch) -> model call id
    pending: list[Measurement] = field(default_factory=list)  # recorded, not folded yet
    pending_values: int = 0  # how many values the pending measurements hold
    # The sampler's model evaluations so far (one per step, two for Heun-type samplers): each
    # one's sigma stays a device tensor until the run ends, so that recording never waits
    # for the device; place_steps then reads them all, with the schedule, in one transfer.
    evaluation_sigmas: list[torch.Tensor] = field(default_factory=list)
    schedule: torch.Tensor | None = None
    latent_shape: tuple | None = None
    output: torch.Tensor | None = None  # the sampler's result, to match a report's LATENT
    finished: bool = False
    steering_spaces: set = field(default_factory=set)  # circulation spaces seen on recorded calls
    approximate_match: bool = False  # set by find_run when the LATENT matched only closely
    # Newer ComfyUI's MultiGPU CFG split records the cond and uncond calls from two threads:
    # a fold must not take the pending list while the other thread adds to it
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    # Output blocks of the probe's planned kernels, per lane (a layer's rows in one layout),
    # until the next fold: each probed call writes into a slot of its lane's (next_slot)
    lanes: dict = field(default_factory=dict, repr=False, compare=False)

    def next_slot(self, lane, shape: tuple[int, int], device: torch.device) -> Slot:
        """A fresh slot for a [rows, 4 + L] measurement of ``lane`` (any hashable key of a
        layer's rows in one layout) on ``device``: a new block only when its lane's is full
        (SLOTS_FIRST, or as many as the run's schedule has steps, then twice the last)."""
        with self.lock:
            found = self.lanes.get(lane)
            if found is None or found.used == found.block.shape[0]:
                if found is not None:
                    slots = min(2 * found.block.shape[0], SLOTS_MAX)
                elif self.schedule is not None:
                    slots = min(max(self.schedule.numel() - 1, SLOTS_FIRST), SLOTS_MAX)
                else:
                    slots = SLOTS_FIRST
                floats = -(-shape[0] * shape[1] // 4) * 4  # 16-byte slots
                found = self.lanes[lane] = Lane(
                    torch.empty((slots, floats), dtype=torch.float32, device=device), floats)
            index = found.used
            found.used = index + 1
        return Slot(found.block, index, shape, found.address + index * found.slot_bytes)

    def record(self, measurement: Measurement) -> None:
        """Keep one probed call's measurement; no tensor work until enough are kept."""
        with self.lock:
            self.pending.append(measurement)
            self.pending_values += measurement.packed.numel()
            if self.pending_values >= FOLD_VALUES:
                self._fold()

    def fold(self) -> None:
        """Add the pending measurements to the sums, maps and series, in a few tensor ops per
        layer: the measurements of one layer (same chunks, same length) are stacked and summed
        at once, and the series keeps a compact copy of their measures, not the maps."""
        with self.lock:
            self._fold()

    def _fold(self) -> None:
        pending, self.pending, self.pending_values = self.pending, [], 0
        self.lanes = {}  # the blocks go with the measurements they hold: new ones from here
        by_layer = defaultdict(list)  # -> positions in pending
        for position, m in enumerate(pending):
            by_layer[(m.index, m.kind, m.group, m.grid, m.text_tokens, m.chunks,
                      m.packed.shape)].append(position)
        values_of = [None] * len(pending)  # position -> each chunk's [4, rows] measures
        for (index, kind, group, grid, text, chunks, _), positions in by_layer.items():
            block = stacked([pending[p].packed for p in positions])  # [n, rows, 4 + L]
            total = block.sum(dim=0)
            measures = block[:, :, :4].transpose(1, 2)  # [n, 4, rows]
            # the series' own compact copies (not views of the maps), made per chunk at once
            per_chunk = [measures[:, :, start:end].clone(memory_format=torch.contiguous_format)
                         .unbind(0)
                         for _, start, end in chunks]
            for j, p in enumerate(positions):
                values_of[p] = [values[j] for values in per_chunk]
            count = len(positions)
            for branch, start, end in chunks:
                key = LayerKey(index, kind, branch)
                summed = total[start:end, :4].T
                self.sums[key] = self.sums[key] + summed if key in self.sums else summed
                self.counts[key] = self.counts.get(key, 0) + count
                if grid is None:
                    continue
                h, w, row = (*grid, grid[1])[:3]
                mkey = MapKey(group, branch, (h, w))
                summed = total[start:end, 4 + text:4 + text + h * row]
                if row != w:  # the image's own columns of each row
                    summed = summed.unflatten(-1, (h, row))[..., :w].flatten(-2)
                self.maps[mkey] = self.maps[mkey] + summed if mkey in self.maps else summed
                self.map_counts[mkey] = self.map_counts.get(mkey, 0) + count
        for m, values in zip(pending, values_of, strict=True):
            for (branch, _, _), chunk_values in zip(m.chunks, values, strict=True):
                self.series.append(SeriesEntry(m.step, m.sigma, m.index, m.kind, branch,
                                               chunk_values, m.evaluation))

    def sampler_chunks(self, model_call: int, chunks: list[tuple[int, int]]) -> list:
        """Those of a call's ``chunks`` [(CFG branch, chunk)] that are the sampler's own pass:
        the first model call of the current evaluation (each model call its own, where
        sampling bypasses ComfyUI's guider and none was counted) for that branch. Later calls
        of an evaluation are guidance re-runs (PAG, SAG, SLG)."""
        evaluation = self.evaluation
        key = evaluation if evaluation is not None else ("call", model_call)
        return [(branch, chunk) for branch, chunk in chunks
                if self.first_call.setdefault((key, branch), model_call) == model_call]

    @property
    def recorded(self) -> bool:
        return bool(self.counts)

    @property
    def steps(self) -> int:
        return len({entry.step for entry in self.series})

    @property
    def evaluation(self) -> int | None:
        """The index of the sampler's current model evaluation; None before the first (or
        where sampling does not go through ComfyUI's guider)."""
        return len(self.evaluation_sigmas) - 1 if self.evaluation_sigmas else None

    def begin_evaluation(self, sigma, schedule) -> None:
        """The sampler starts a model evaluation at ``sigma`` (its guider's predict_noise);
        ``schedule``: the run's sigmas, when the sampler gives them."""
        if sigma is None:  # no sigma given: the entries of this evaluation stay unplaced
            sigma = torch.full((1,), float("nan"))
        sigma = torch.as_tensor(sigma).detach().reshape(-1)[:1]  # a view: no device work
        self.evaluation_sigmas.append(sigma)
        if self.schedule is None and isinstance(schedule, torch.Tensor):
            self.schedule = schedule.detach()

    def place_steps(self) -> None:
        """Give the series entries recorded without a host sigma their sigma and step: every
        evaluation's sigma and the schedule in one device-to-host transfer, at the run's end."""
        if not any(e.sigma is None and e.evaluation is not None for e in self.series):
            return
        from ..hook.schedule import locate_step

        device = self.evaluation_sigmas[0].device
        parts = [s.to(device, torch.float32) for s in self.evaluation_sigmas]
        if self.schedule is not None:
            parts.append(self.schedule.reshape(-1).to(device, torch.float32))
        count = len(self.evaluation_sigmas)
        values = torch.cat(parts).tolist()
        sigmas = values[:count]
        schedule = values[count:] if self.schedule is not None else None

        def placed(entry: SeriesEntry) -> SeriesEntry:
            if entry.sigma is not None or entry.evaluation is None:
                return entry  # read on the host while sampling, or outside any evaluation
            sigma = sigmas[entry.evaluation]
            if sigma != sigma:  # NaN: that evaluation came without a sigma
                return entry
            info = locate_step(sigma, schedule)
            return entry._replace(step=info.step, sigma=info.sigma)

        self.series = [placed(entry) for entry in self.series]


@dataclass
class ProbeState:
    """A probe's settings and the runs it recorded, kept in the registry by id."""

    probe_id: str
    family: str
    layer_map: LayerMap
    settings: ProbeSettings
    runs: deque = field(default_factory=lambda: deque(maxlen=RUNS_KEPT))
    current: ProbeRun | None = None
    runs_started: int = 0


@dataclass(frozen=True)
class ProbeHandle:
    """The PROBE value that flows to the report node: an id into the registry."""

    probe_id: str
    family: str


_REGISTRY: dict[str, ProbeState] = {}
_REGISTRY_LOCK = threading.Lock()
_IDS = itertools.count()


def register(family: str, layer_map: LayerMap, settings: ProbeSettings) -> ProbeState:
    """A new probe's state in the registry (the oldest are dropped past PROBES_KEPT)."""
    with _REGISTRY_LOCK:
        probe_id = f"probe-{next(_IDS)}"
        state = ProbeState(probe_id, family, layer_map, settings)
        _REGISTRY[probe_id] = state
        while len(_REGISTRY) > PROBES_KEPT:  # bounded memory over a long session
            _REGISTRY.pop(next(iter(_REGISTRY)))
    return state


def new_run(state: ProbeState) -> ProbeRun:
    """A new run of this probe, numbered from 1 per probe (what the report calls "run N")."""
    state.runs_started += 1
    run = ProbeRun(state.runs_started)
    state.runs.append(run)
    return run


def state_of(probe_id: str) -> ProbeState | None:
    """The probe's state, None once it has left the registry."""
    return _REGISTRY.get(probe_id)


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
