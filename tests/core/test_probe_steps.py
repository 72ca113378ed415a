"""Placing a probe's series on the sampler's schedule after the run (probe/registry.py): the
sigmas stay on the device while sampling and are read once when the run ends."""

from __future__ import annotations

import math

import torch
from hopfield_circulation.probe.registry import ProbeRun, SeriesEntry


def entry(evaluation, step=None, sigma=None) -> SeriesEntry:
    return SeriesEntry(step, sigma, 0, "self", 0, torch.zeros(4, 1), evaluation)


def test_each_entry_takes_its_evaluations_sigma_and_the_step_it_falls_in():
    schedule = torch.tensor([14.6, 7.0, 3.0, 1.0, 0.0])
    run = ProbeRun(1)
    # Heun-like: evaluations at the steps' sigmas and at the next one's (a step's second half)
    for sigma in (14.6, 7.0, 7.0, 3.0, 1.0, 2.0):
        run.begin_evaluation(torch.tensor([sigma, sigma]), schedule)
    assert run.evaluation == 5
    run.series = [entry(e) for e in range(6)] + [entry(None, step=9, sigma=0.5)]
    run.place_steps()
    assert [e.step for e in run.series] == [0, 1, 1, 2, 3, 2, 9]
    assert [e.sigma for e in run.series][:6] == [
        float(torch.tensor(s, dtype=torch.float32)) for s in (14.6, 7.0, 7.0, 3.0, 1.0, 2.0)]
    assert run.series[6].sigma == 0.5  # read on the host while sampling: kept as it was


def test_without_a_schedule_or_a_sigma_what_is_unknown_stays_unknown():
    run = ProbeRun(1)
    run.begin_evaluation(torch.tensor([5.0]), None)
    run.begin_evaluation(None, None)  # an evaluation that came without a sigma
    run.series = [entry(0), entry(1), entry(None)]
    run.place_steps()
    assert (run.series[0].step, run.series[0].sigma) == (None, 5.0)
    assert run.series[1].sigma is None and run.series[2].sigma is None
    assert not any(isinstance(e.sigma, float) and math.isnan(e.sigma) for e in run.series)


def test_nothing_to_place_reads_nothing():
    run = ProbeRun(1)
    kept = entry(None, step=0, sigma=1.0)
    run.series = [kept]
    run.place_steps()  # no evaluation was counted: no transfer, nothing changes
    assert run.series[0] is kept
