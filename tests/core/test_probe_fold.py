"""Folding a probe run's recorded calls into its sums, maps and series (probe/registry.py):
the same sums as adding each call as it came, in call order, whenever the folds happen."""

from __future__ import annotations

import random

import pytest
import torch
from hopfield_circulation.probe import registry
from hopfield_circulation.probe.registry import LayerKey, MapKey, Measurement, ProbeRun

# (layer index, kind, group, grid, text tokens): a UNet-like level, a joint-attention block
# (text tokens first), a layer recorded without a map, and HiDream-E1's image first with a
# reference to the right of each row (2 rows of 5 tokens, the image's 3 first; text after)
LAYERS = [(0, "self", "down", (4, 4), 0), (3, "joint", "up", (2, 3), 5),
          (7, "self", "mid", None, 0), (9, "joint", "late", (2, 3, 5), 0)]
TEXT_AFTER = 4  # the tokens after the image rows of a (h, w, row) grid
# chunk layouts: both branches in one batch, cond alone, uncond measured on its own rows
CHUNKS = [((1, 0, 2), (0, 2, 4)), ((0, 0, 2),), ((1, 0, 1),)]


def measurements(seed: int, evaluations: int = 6) -> list[Measurement]:
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    made = []
    for evaluation in range(evaluations):
        for index, kind, group, grid, text in LAYERS:
            chunks = CHUNKS[rng.randrange(len(CHUNKS))] if index else CHUNKS[0]
            rows = max(end for _, _, end in chunks)
            if grid is None:
                tokens = text + 9
            elif len(grid) == 3:
                tokens = text + grid[0] * grid[2] + TEXT_AFTER
            else:
                tokens = text + grid[0] * grid[1]
            packed = torch.randn(rows, 4 + tokens, generator=gen, dtype=torch.float64)
            made.append(Measurement(index, kind, group, grid, text, chunks, evaluation,
                                    1.0 - evaluation / evaluations, evaluation, packed))
    return made


def added_as_they_came(made: list[Measurement]) -> ProbeRun:
    """The literal bookkeeping: each call's chunks added to the sums one by one."""
    run = ProbeRun(1)
    for m in made:
        for branch, start, end in m.chunks:
            key = LayerKey(m.index, m.kind, branch)
            values = m.packed[start:end, :4].T
            run.sums[key] = run.sums.get(key, 0) + values
            run.counts[key] = run.counts.get(key, 0) + 1
            run.series.append(registry.SeriesEntry(m.step, m.sigma, m.index, m.kind, branch,
                                                   values, m.evaluation))
            if m.grid is not None:
                h, w = m.grid[:2]
                mkey = MapKey(m.group, branch, (h, w))
                image = m.packed[start:end, 4 + m.text_tokens:]
                if len(m.grid) == 3:  # each row's first w tokens, literally
                    row = m.grid[2]
                    image = torch.stack([image[:, r * row + c] for r in range(h)
                                         for c in range(w)], dim=1)
                run.maps[mkey] = run.maps.get(mkey, 0) + image
                run.map_counts[mkey] = run.map_counts.get(mkey, 0) + 1
    return run


def assert_same_record(got: ProbeRun, want: ProbeRun) -> None:
    assert got.counts == want.counts and got.map_counts == want.map_counts
    assert got.sums.keys() == want.sums.keys() and got.maps.keys() == want.maps.keys()
    for key, value in want.sums.items():
        torch.testing.assert_close(got.sums[key], value, rtol=1e-12, atol=1e-12)
    for key, value in want.maps.items():
        torch.testing.assert_close(got.maps[key], value, rtol=1e-12, atol=1e-12)
    assert [e[:5] + e[6:] for e in got.series] == [e[:5] + e[6:] for e in want.series]
    for entry, expected in zip(got.series, want.series, strict=True):
        assert torch.equal(entry.values, expected.values)


@pytest.mark.parametrize("seed", range(3))
def test_one_fold_at_the_end_matches_adding_each_call(seed):
    made = measurements(seed)
    run = ProbeRun(1)
    for m in made:
        run.record(m)
    assert not run.sums and not run.series and not run.recorded  # nothing folded yet
    run.fold()
    assert not run.pending and run.pending_values == 0
    assert_same_record(run, added_as_they_came(made))


def test_folds_while_sampling_match_one_fold(monkeypatch):
    """A run that holds more values than FOLD_VALUES folds as it goes; same result."""
    made = measurements(5, evaluations=9)
    monkeypatch.setattr(registry, "FOLD_VALUES", 300)
    run = ProbeRun(1)
    folds = 0
    for m in made:
        before = len(run.pending)
        run.record(m)
        folds += len(run.pending) < before + 1
    run.fold()
    assert folds >= 3
    assert_same_record(run, added_as_they_came(made))


def test_the_series_keeps_compact_measures_not_the_maps():
    made = measurements(1)
    run = ProbeRun(1)
    for m in made:
        run.record(m)
    run.fold()
    for entry in run.series:
        assert entry.values.shape[0] == 4
        # a copy per layer and chunk ([calls, 4, rows]), not a view of a call's packed map
        assert entry.values.untyped_storage().nbytes() <= len(made) * 4 * 4 * 8
        assert all(entry.values.untyped_storage().data_ptr() != m.packed.data_ptr()
                   for m in made)


def test_two_threads_recording_at_once_lose_nothing(monkeypatch):
    """Newer ComfyUI's MultiGPU CFG split records the cond and uncond calls from two worker
    threads into one run, folding as they go: every call is counted once."""
    import threading

    monkeypatch.setattr(registry, "FOLD_VALUES", 200)
    made = [measurements(seed, evaluations=30) for seed in (7, 8)]
    run = ProbeRun(1)
    start = threading.Barrier(2)

    def record(part):
        start.wait()
        for m in part:
            run.record(m)

    threads = [threading.Thread(target=record, args=(part,)) for part in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.fold()
    want = added_as_they_came(made[0] + made[1])
    assert run.counts == want.counts and run.map_counts == want.map_counts
    assert len(run.series) == len(want.series)
    for key, value in want.sums.items():
        torch.testing.assert_close(run.sums[key], value, rtol=1e-10, atol=1e-10)


def in_slots(run: ProbeRun, made: list[Measurement], every: int = 1) -> list[Measurement]:
    """``made`` with every ``every``-th measurement's values written into a slot of the run's
    output blocks, as the probe's planned kernels write them (one lane per layer and rows)."""
    moved = []
    for position, m in enumerate(made):
        if position % every:
            moved.append(m)
            continue
        slot = run.next_slot((m.index, m.packed.shape), tuple(m.packed.shape), "cpu")
        assert slot.address % 16 == 0
        slot.block[slot.index, :slot.numel()] = m.packed.flatten()
        moved.append(m._replace(packed=slot))
    return moved


@pytest.mark.parametrize("every", [1, 2, 3])
def test_measurements_in_the_runs_blocks_fold_as_tensors_do(every, monkeypatch):
    """Slots of the run's output blocks (all of them, or mixed with tensors of their own),
    with blocks filling up and folds while sampling: the same sums, maps and series."""
    monkeypatch.setattr(registry, "SLOTS_FIRST", 2)  # blocks fill up: new ones, twice as large
    monkeypatch.setattr(registry, "FOLD_VALUES", 2000)
    made = [m._replace(packed=m.packed.float()) for m in measurements(11, evaluations=12)]
    run = ProbeRun(1)
    for m in in_slots(run, made, every):
        run.record(m)
    run.fold()
    want = added_as_they_came(made)
    assert run.counts == want.counts and run.map_counts == want.map_counts
    for key, value in want.sums.items():
        torch.testing.assert_close(run.sums[key], value)
    for key, value in want.maps.items():
        torch.testing.assert_close(run.maps[key], value)
    assert [e[:5] + e[6:] for e in run.series] == [e[:5] + e[6:] for e in want.series]
    for entry, expected in zip(run.series, want.series, strict=True):
        assert torch.equal(entry.values, expected.values)
        assert entry.values.untyped_storage().nbytes() < 4 * 4 * 4 * len(made)  # a copy
    assert not run.lanes  # the blocks went with the fold


def test_a_lane_holds_the_schedules_steps_in_one_block():
    """A lane's first block holds a slot per step of the run's schedule (at least
    SLOTS_FIRST): a layer's measurements of a whole run fold as one view of it."""
    run = ProbeRun(1)
    run.begin_evaluation(torch.tensor([14.6]), torch.linspace(14.6, 0.0, 31))
    slots = [run.next_slot("layer", (1, 4100), "cpu") for _ in range(30)]
    assert {slot.block.data_ptr() for slot in slots} == {slots[0].block.data_ptr()}
    assert slots[0].block.shape == (30, 4100)
    assert [s.address - slots[0].address for s in slots] == [16400 * i for i in range(30)]
    view = registry.stacked(slots)
    assert view.shape == (30, 1, 4100) and view.data_ptr() == slots[0].block.data_ptr()
    odd = run.next_slot("other", (1, 4254), "cpu")  # SD3's 4,250 tokens: padded to 16 bytes
    assert odd.block.shape == (30, 4256) and run.next_slot("other", (1, 4254), "cpu").address \
        == odd.address + 4 * 4256
