"""One call's device time alone, without the host's time to issue it (benchmarks on CUDA).

A CUDA event starts timing when the device reaches it. On an idle device that is at once, so
an event pair around one call also times the host issuing the call's launches (Python,
argument checks, each launcher) wherever the device waits for them: for a small kernel, most
of what is timed, and a different share for each path and each tile or chunk count compared.

``device_ms`` first gives the device a spin of its own (``torch.cuda._sleep``) and issues the
start event, the call and the end event while it spins: the device then runs them back to
back, and the events time its own work, the gaps between its kernels included. A sample
counts only where an event recorded after the spin had not completed when the host had issued
the end event; otherwise the spin is doubled and the sample taken again. A call that waits
for the device itself (a host sync) cannot be timed so and gets None.
"""

from __future__ import annotations

import statistics
import time

import torch

MAX_DOUBLINGS = 6  # the spin's first length covers twice the measured issue time already
SPIN_MARGIN_MS = 0.05
CALIBRATION_CYCLES = 1_000_000

_cycles_per_ms: dict = {}  # device -> spin cycles per ms, measured once per process


def spin_cycles_per_ms(cuda=torch.cuda) -> float:
    """How many cycles of ``cuda._sleep`` the current device spins per millisecond."""
    device = cuda.current_device()
    if device not in _cycles_per_ms:
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        cuda._sleep(CALIBRATION_CYCLES)  # a first spin, untimed: the clocks come up
        start.record()
        cuda._sleep(CALIBRATION_CYCLES)
        end.record()
        end.synchronize()
        _cycles_per_ms[device] = CALIBRATION_CYCLES / max(start.elapsed_time(end), 1e-6)
    return _cycles_per_ms[device]


def device_ms(fn, warmup: int, reps: int, cuda=torch.cuda,
              clock=time.perf_counter) -> float | None:
    """Median over ``reps`` samples of the device time of ``fn()``'s work, issued while the
    device spins (the module's doc); None where ``fn`` waits for the device itself.
    ``cuda`` and ``clock``: torch.cuda and the host's clock (tests pass a simulated device)."""
    for _ in range(warmup):
        fn()
    cuda.synchronize()
    began = clock()
    fn()  # how long the host takes to issue it (warm: nothing compiles now)
    issue_ms = (clock() - began) * 1e3
    cuda.synchronize()
    spin = (2 * issue_ms + SPIN_MARGIN_MS) * spin_cycles_per_ms(cuda)
    doublings = 0
    times = []
    while len(times) < reps:
        cuda._sleep(int(spin))
        spun = cuda.Event()
        spun.record()
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        issued_in_time = not spun.query()  # the device had not yet reached the start event
        end.synchronize()
        if issued_in_time:
            times.append(start.elapsed_time(end))
        elif doublings == MAX_DOUBLINGS:
            return None
        else:
            spin, doublings = 2 * spin, doublings + 1
    return statistics.median(times)
