"""benchmarks/gpu_timing.py times a call's device work alone, on a simulated device: one
stream whose work starts when the host has issued it and the device is free, events that
complete when the device reaches them, and a host clock that the calls advance."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import gpu_timing  # noqa: E402

CYCLES_PER_MS = 1.5e6


class SimulatedDevice:
    """torch.cuda's surface that device_ms uses, in simulated milliseconds."""

    def __init__(self):
        self.host = 0.0  # the host's clock
        self.free_at = 0.0  # when the device has run everything issued so far
        self.spins = []
        device = self

        class Event:
            def __init__(self, enable_timing=False):
                self.at = None

            def record(self):
                self.at = device.run(0.0)

            def query(self):
                return self.at <= device.host

            def synchronize(self):
                device.host = max(device.host, self.at)

            def elapsed_time(self, end):
                return end.at - self.at

        self.Event = Event

    def run(self, ms: float) -> float:
        """Issue ``ms`` of device work now; when it ends."""
        self.free_at = max(self.free_at, self.host) + ms
        return self.free_at

    def current_device(self):
        return 0

    def synchronize(self):
        self.host = max(self.host, self.free_at)

    def _sleep(self, cycles):
        self.spins.append(cycles)
        self.run(cycles / CYCLES_PER_MS)

    def clock(self) -> float:  # seconds, as time.perf_counter
        return self.host / 1e3

    def call(self, *steps):
        """A call: ("host", ms) of host work, ("kernel", ms) launched, ("sync",) waits."""

        def fn():
            for step in steps:
                if step[0] == "host":
                    self.host += step[1]
                elif step[0] == "kernel":
                    self.run(step[1])
                else:
                    self.synchronize()

        return fn


@pytest.fixture(autouse=True)
def fresh_calibration():
    gpu_timing._cycles_per_ms.clear()
    yield
    gpu_timing._cycles_per_ms.clear()


def timed(device, fn, reps=5):
    return gpu_timing.device_ms(fn, warmup=2, reps=reps, cuda=device, clock=device.clock)


def naive_ms(device, fn):
    """An event pair around one call on an idle device (bench_gpu's median_ms)."""
    device.synchronize()
    start, end = device.Event(True), device.Event(True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def test_spin_calibration():
    device = SimulatedDevice()
    assert gpu_timing.spin_cycles_per_ms(device) == pytest.approx(CYCLES_PER_MS)


def test_host_bound_call_times_only_the_kernels():
    device = SimulatedDevice()
    fn = device.call(("host", 0.05), ("kernel", 0.01), ("host", 0.03), ("kernel", 0.02))
    assert naive_ms(device, fn) == pytest.approx(0.10)  # the host's issuing timed too
    assert timed(device, fn) == pytest.approx(0.03)


def test_device_bound_call():
    device = SimulatedDevice()
    fn = device.call(("host", 0.02), ("kernel", 0.5), ("host", 0.01), ("kernel", 0.25))
    assert timed(device, fn) == pytest.approx(0.75)


def test_a_spin_too_short_is_doubled_and_the_sample_taken_again():
    device = SimulatedDevice()
    calls = 0

    def slower_after_warmup():  # the measured issue time underestimates the later calls
        nonlocal calls
        calls += 1
        device.host += 0.01 if calls <= 3 else 0.4
        device.run(0.02)

    assert timed(device, slower_after_warmup) == pytest.approx(0.02)
    assert device.spins[-1] >= 2 * device.spins[2]  # [0], [1]: the calibration


def test_a_call_that_waits_for_the_device_gets_none():
    device = SimulatedDevice()
    fn = device.call(("host", 0.01), ("kernel", 0.01), ("sync",), ("kernel", 0.01))
    assert timed(device, fn) is None
    assert len(device.spins) == 2 + 1 + gpu_timing.MAX_DOUBLINGS
