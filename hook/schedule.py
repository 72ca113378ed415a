"""Where a model call sits in the sampling schedule, decided once per call outside attention.

The sigma of a model call is a device tensor. Reading it inside every attention layer would
synchronise the GPU 70 times per step, so an APPLY_MODEL wrapper reads it (with the schedule, in
one transfer) once per model call and leaves a ``StepInfo`` in the call's transformer_options for
the attention hooks. The step window is then a comparison of Python floats, the
SkipLayerGuidance convention.

Even one read per model call stops the host from queueing the next step while the device
finishes this one, so it is made only for models that asked for it (``require_host_sigma``: a
step window narrower than the whole run, of a circulation or a probe). Over the whole run
neither needs it, and their model calls wait for nothing (the probe places its series on the
schedule when the run ends: probe/registry.py).

What a model call's attention hooks need to know about the call (its step, its CFG chunks, its
latent's shape, which of our patches the model carries) is kept in a ``ModelCall`` that the
wrapper pushes for the length of the call, never in the call's transformer_options: a compiled
graph reads it like any Python value and is guarded on what it read, while ComfyUI's
TorchCompileModel drops every guard on transformer_options (since v0.5.0), so a graph that
read its decisions there was reused for calls that needed others (ModelCall).
"""

from __future__ import annotations

import itertools
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from . import intact

WRAPPER_KEY = "hopfield_circulation"
# In model_options["transformer_options"]: some feature of this model reads the step on the host
READS_SIGMA_KEY = "hopfield_circulation_reads_sigma"
# ... and the (low, high) sigma windows its features step by, decided once per model call
WINDOWS_KEY = "hopfield_circulation_windows"
# ... and a number for the set of our patches it carries, new with every patch (new_patch_key)
PATCH_KEY = "hopfield_circulation_patch"


_MODEL_CALLS = itertools.count()
_PATCHES = itertools.count(1)


class _Running(threading.local):
    """The model calls under way in this thread, innermost last (running_call). Per thread:
    newer ComfyUI's MultiGPU CFG split runs the cond and uncond model calls at once, each on its
    own GPU's worker thread, and a hook must read its own call's CFG chunks and step (dynamo
    reads a thread's attributes and guards on them as on a global's)."""

    def __init__(self):
        self.calls: list[ModelCall] = []


_RUNNING = _Running()


@dataclass(frozen=True)
class StepInfo:
    sigma: float | None  # None: not read (no feature of the model needs it on the host)
    step: int | None  # index into the sampler's schedule; None when the host gave none
    percent: float | None  # step / (number of steps), 0 at the first step
    model_call: int = -1  # increases with every model call (tells guidance re-runs apart)
    # (low, high) -> whether sigma lies in that window, for the windows the model's features
    # asked for (require_host_sigma), decided here, outside any compiled graph: a graph that
    # compared the sigma itself would guard on its value and be compiled again at the next step
    windows: dict[tuple[float, float], bool] | None = None

    def in_window(self, window: tuple[float, float]) -> bool:
        """Whether this model call lies in ``window`` (window_bounds' (low, high)); True where
        its sigma was not read."""
        inside = None if self.windows is None else self.windows.get(window)
        if inside is None:
            return self.sigma is None or within(self.sigma, window)
        return inside


UNREAD = StepInfo(None, None, None)


class ModelCall:
    """A model call under way, as the step wrapper saw it, outside any compiled graph.

    A graph traced through our hooks reads its decisions here (the step windows, the CFG
    chunks, the latent's shape, and ``patch``, which each of our hooks compares with the
    number it was installed under), so dynamo guards the graph on them: a call that needs
    other decisions, or a model with other patches of ours, gets a graph of its own. Read
    from the call's transformer_options instead, they were not guarded under
    TorchCompileModel, which filters out every guard on transformer_options (ComfyUI 0.5.0
    and later): a step window steered every step or none, and a model re-steered after
    TorchCompileModel kept its first settings. Nothing read in a graph may change from one
    model call to the next without cause (the step and the model call's number do: they are
    read only when a graph runs, through running_step()).

    ``hook_ran``: set when one of our hooks runs in this call; ``placed``: when one of them
    placed a call in a layer of the model (intact.py).
    """

    __slots__ = ("step", "cond_or_uncond", "latent_shape", "patch", "hook_ran", "placed")

    def __init__(self, step: StepInfo = UNREAD, cond_or_uncond: tuple[int, ...] = (0,),
                 latent_shape: tuple[int, ...] | None = None, patch: int = 0):
        self.step = step
        self.cond_or_uncond = cond_or_uncond  # one entry per batch chunk: 0 cond, 1 uncond
        self.latent_shape = latent_shape
        self.patch = patch  # the model's PATCH_KEY; 0: none of ours
        self.hook_ran = False
        self.placed = False


@contextmanager
def running(call: ModelCall):
    """``call`` is the model call under way inside this context."""
    calls = _RUNNING.calls
    calls.append(call)
    try:
        yield call
    finally:
        calls.pop()


def running_call() -> ModelCall | None:
    """The model call under way in this thread (the innermost, where one model's call runs
    inside another's), or None outside any."""
    calls = _RUNNING.calls
    return calls[-1] if calls else None


def new_patch_key(model_patcher) -> int:
    """Give ``model_patcher`` (a clone that one of our nodes just patched) a patch number of
    its own, and return it."""
    options = model_patcher.model_options.setdefault("transformer_options", {})
    options[PATCH_KEY] = key = next(_PATCHES)
    return key


def locate_step(sigma: float, schedule: list[float] | None) -> StepInfo:
    """Match sigma against the sampler's schedule; substep sigmas (Heun, DPM-2) take the step
    they fall in (the last schedule entry at or above them)."""
    if not schedule or len(schedule) < 2:
        return StepInfo(sigma, None, None)
    steps = len(schedule) - 1  # the schedule ends with the final sigma (usually 0)
    for i, s in enumerate(schedule):
        if abs(s - sigma) <= 1e-4 * max(abs(s), 1e-8):
            return StepInfo(sigma, i, i / steps)
    above = [i for i, s in enumerate(schedule[:-1]) if s >= sigma]
    i = above[-1] if above else 0
    return StepInfo(sigma, i, i / steps)


def running_step() -> StepInfo:
    """The StepInfo of the model call under way, read when a compiled graph hands its results
    out (probe/traced.py); UNREAD outside any."""
    calls = _RUNNING.calls
    return calls[-1].step if calls else UNREAD


def in_window(sigma: float, sigma_start: float, sigma_end: float) -> bool:
    """The SkipLayerGuidance convention: active while sigma_end <= sigma <= sigma_start."""
    return within(sigma, window_bounds(sigma_start, sigma_end))


def within(sigma: float, window: tuple[float, float]) -> bool:
    """Whether sigma lies in ``window``, window_bounds' (low, high)."""
    return window[0] <= sigma <= window[1]


def window_bounds(sigma_start: float, sigma_end: float) -> tuple[float, float]:
    """(low, high) sigma bounds of a window, each with a relative slack: percent_to_sigma and
    the sampler's schedule round differently."""
    return sigma_end * (1 - 1e-5), sigma_start * (1 + 1e-5)


def sigma_window(model_patcher, start_percent: float, end_percent: float) -> tuple[float, float]:
    """(sigma_start, sigma_end) for a percent window, validated."""
    for name, value in (("start_percent", start_percent), ("end_percent", end_percent)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value}")
    if start_percent > end_percent:
        raise ValueError(
            f"start_percent ({start_percent}) is after end_percent ({end_percent}): no step "
            "would be steered"
        )
    sampling = model_patcher.get_model_object("model_sampling")
    return sampling.percent_to_sigma(start_percent), sampling.percent_to_sigma(end_percent)


def require_host_sigma(model_patcher, window: tuple[float, float] | None = None) -> None:
    """Have every model call of ``model_patcher`` (a clone) read its sigma and step on the host:
    one device synchronisation per model call, for features that decide per step. ``window``:
    the (low, high) bounds (window_bounds) the feature steps by, which StepInfo.in_window
    answers for each model call."""
    options = model_patcher.model_options.setdefault("transformer_options", {})
    options[READS_SIGMA_KEY] = True
    if window is not None and window not in options.get(WINDOWS_KEY, ()):
        options[WINDOWS_KEY] = (*options.get(WINDOWS_KEY, ()), window)  # the clone's own tuple


def whole_run(start_percent: float, end_percent: float) -> bool:
    """A window that holds every step of any schedule: no need to read the step."""
    return start_percent == 0.0 and end_percent == 1.0


def _read_sigma_and_schedule(t, schedule) -> tuple[float, list[float] | None]:
    """This call's sigma and the sampler's schedule as Python floats, in one device transfer
    (all rows of a model call share one sigma)."""
    sigma = t.reshape(-1)[:1]
    if schedule is None:
        return float(sigma), None
    values = torch.cat((sigma.float(), schedule.reshape(-1).to(sigma.device, torch.float32)))
    values = values.tolist()
    return values[0], values[1:]


def _apply_model_wrapper(executor, x, t, *args, **kwargs):
    """Keep this model call's step, CFG chunks and latent shape for the attention hooks while
    it runs (ModelCall), and check that the model's attention override reached them
    (intact.py)."""
    transformer_options = args[3] if len(args) > 3 else kwargs.get("transformer_options")
    if transformer_options is None:
        return executor(x, t, *args, **kwargs)
    windows = None
    if transformer_options.get(READS_SIGMA_KEY):
        sigma, schedule = _read_sigma_and_schedule(t, transformer_options.get("sample_sigmas"))
        step = locate_step(sigma, schedule)
        windows = {window: within(sigma, window)
                   for window in transformer_options.get(WINDOWS_KEY, ())}
    else:
        step = UNREAD
    call = ModelCall(StepInfo(step.sigma, step.step, step.percent, next(_MODEL_CALLS), windows),
                     tuple(transformer_options.get("cond_or_uncond") or (0,)), tuple(x.shape),
                     transformer_options.get(PATCH_KEY, 0))
    with running(call):
        out = executor(x, t, *args, **kwargs)
    intact.confirm(call, transformer_options)
    return out


def ensure_step_wrapper(model_patcher) -> None:
    """Install the wrapper once per model, however many of our nodes are stacked."""
    from comfy.patcher_extension import WrappersMP

    if not model_patcher.get_wrappers(WrappersMP.APPLY_MODEL, WRAPPER_KEY):
        model_patcher.add_wrapper_with_key(
            WrappersMP.APPLY_MODEL, WRAPPER_KEY, _apply_model_wrapper
        )
