"""Launching the pack's Triton kernels with Triton's per-launch bookkeeping done once.

``kernel[grid](*args, **constexprs)`` on a jit'ed function binds and specialises every
argument, builds a cache key (a string of the options) and looks the compiled kernel up, in
every call: host time that a launch-bound sampling step pays in every steered attention call,
growing with the argument count (the fused kernel has 34 besides its constexprs;
``benchmarks/bench_triton_launch.py`` measures both paths). ``CachedLauncher`` does that once
per *specialisation* and afterwards calls the compiled kernel's launcher directly, the way
torch inductor launches its own Triton kernels.

Its cache key holds exactly what Triton specialises a launch on, so an entry is only reused
where Triton would pick the same compiled kernel:

* tensors: dtype, and whether the address is a multiple of 16 bytes;
* ints: the value itself (Triton makes 1 a constant, marks multiples of 16, and picks i32, i64
  or u64 by magnitude: all functions of the value);
* floats, bools, None: their type (Triton specialises none of them on the value);
* the constexpr keywords and the launch options, by value;
* the current device (made the tensors' own for the launch).

``tests/core/test_triton_launch.py`` checks the key against Triton's own specialisation on
random argument lists. Everything that does not fit that contract takes Triton's own launch:
the interpreter, a profiler's launch hook, a Triton whose launcher refuses the call.
"""

from __future__ import annotations

import inspect
import os
import warnings

import torch

CACHE_ENV = "HOPFIELD_CIRCULATION_LAUNCH_CACHE"  # "0": every launch through Triton's own path
# Entries kept per kernel: a key holds the call's shapes and strides, so a session that visits
# many resolutions makes a few per resolution; past this the cache starts afresh.
MAX_ENTRIES = 512


class CachedLauncher:
    """``launcher[grid](*args, **constexprs)`` like the jit'ed ``kernel[grid](...)`` it wraps.

    ``tensors``: how many leading positional arguments are tensors (every call passes them
    there; the others are ints and floats). Every constexpr comes as a keyword. ``runtime``:
    (driver, runtime knobs) instead of Triton's, which its first launch sets up (tests and
    benchmarks that run without a GPU).
    """

    def __init__(self, kernel, tensors: int, *, enabled: bool | None = None,
                 runtime: tuple | None = None):
        self.kernel = kernel
        self.tensors = tensors
        self.names = tuple(kernel.arg_names)
        signature = getattr(kernel, "signature", None) or inspect.signature(kernel.fn)
        self.defaults = {name: p.default for name, p in signature.parameters.items()
                         if p.default is not inspect.Parameter.empty}
        if enabled is None:
            enabled = os.environ.get(CACHE_ENV, "1") != "0"
        self.enabled = enabled
        self.compiled: dict[tuple, tuple] = {}  # key -> (compiled kernel, constexpr values)
        self.misses = 0  # launches that went through Triton's own path (tests, benchmarks)
        # Triton's active driver and its runtime knobs (launch hooks), after a first launch
        self._driver, self._hooks = runtime or (None, None)

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launch(grid, args, kwargs)

    def key(self, args: tuple, kwargs: dict) -> tuple:
        n = self.tensors
        return (
            tuple([(t.dtype, not t.data_ptr() & 15) for t in args[:n]]),
            tuple([a if type(a) is int else type(a) for a in args[n:]]),
            tuple(kwargs.items()),
        )

    def launch(self, grid: tuple, args: tuple, kwargs: dict) -> None:
        # Triton launches on the current device, torch's own ops on their tensors' device: a
        # model on another GPU than the current one (multi-GPU set-ups) needs its device made
        # current for the launch, else the kernel would run where its tensors are not.
        index = args[0].get_device()
        if index >= 0 and index != torch.cuda.current_device():
            with torch.cuda.device(index):
                self._launch(grid, args, kwargs, index)
            return
        self._launch(grid, args, kwargs, index)

    def _launch(self, grid: tuple, args: tuple, kwargs: dict, index: int) -> None:
        """``index``: the tensors' device, current now (-1: not a CUDA tensor, then the
        driver says which device is current)."""
        if not self.enabled:
            self.kernel[grid](*args, **kwargs)
            return
        driver = self._driver
        if driver is None:  # first launch: Triton's own path, which sets its driver up
            self._miss(grid, args, kwargs, None)
            return
        device = self.device_of(index)
        key = (device, self.key(args, kwargs))
        entry = self.compiled.get(key)
        hooks = self._hooks
        if entry is None or hook_set(hooks.launch_enter_hook) \
                or hook_set(hooks.launch_exit_hook):  # a profiler's: Triton's path
            self._miss(grid, args, kwargs, key)
            return
        compiled, constants = entry
        grid_1 = grid[1] if len(grid) > 1 else 1
        grid_2 = grid[2] if len(grid) > 2 else 1
        try:
            # As JITFunction.run calls it (Triton 3.6 and 3.9 alike, and torch inductor's
            # launchers): the grid, the stream, the loaded function, the packed metadata,
            # launch metadata and hooks (None without a profiler's hook), then every argument
            # in signature order, constexprs included (the launcher skips those).
            compiled.run(grid[0], grid_1, grid_2, driver.get_current_stream(device),
                         compiled.function, compiled.packed_metadata, None, None, None,
                         *args, *constants)
        except (TypeError, ValueError, SystemError, AttributeError) as error:
            self.refused(error)
            self.kernel[grid](*args, **kwargs)

    def refused(self, error: Exception) -> None:
        """The compiled launcher refused a cached launch. It parses its arguments before it
        launches, so nothing ran: this Triton calls it differently, and every launch takes
        Triton's own path from now on."""
        self.enabled = False
        warnings.warn(f"Hopfield Circulation: Triton's compiled launcher refused the cached "
                      f"launch ({error!r}); launching through Triton's own path from now on",
                      RuntimeWarning, stacklevel=4)

    @property
    def hooks(self):
        """Triton's runtime knobs (launch hooks); set by the first launch."""
        return self._hooks

    def device_of(self, index: int) -> int:
        """The device a launch on tensors of device ``index`` runs on (-1, not a CUDA
        tensor: the driver's current one). Needs the driver (after a first launch)."""
        return index if index >= 0 else self._driver.get_current_device()

    def stream(self, device: int):
        """The current stream of ``device`` (-1: the current device), as a launch takes it."""
        return self._driver.get_current_stream(self.device_of(device))

    def entry(self, args: tuple, kwargs: dict) -> tuple | None:
        """(compiled kernel, constexpr values) that a launch with these arguments on their
        device would use, once one has run (fused_plan.py replays it); None before."""
        if not self.enabled or self._driver is None:
            return None
        return self.compiled.get((self.device_of(args[0].get_device()),
                                  self.key(args, kwargs)))

    def _miss(self, grid, args, kwargs, key) -> None:
        self.misses += 1
        compiled = self.kernel[grid](*args, **kwargs)
        if compiled is None or not hasattr(compiled, "packed_metadata"):
            self.enabled = False  # an interpreter, or a Triton that hands back nothing to cache
            return
        if self._driver is None:
            import triton
            from triton.runtime import driver

            if not hasattr(triton, "knobs"):  # before 3.4: launch hooks live elsewhere
                self.enabled = False
                return
            self._driver, self._hooks = driver.active, triton.knobs.runtime
            key = (self.device_of(args[0].get_device()), self.key(args, kwargs))
        tail = self.names[len(args):]
        constants = tuple(kwargs[name] if name in kwargs else self.defaults[name]
                          for name in tail)
        if len(self.compiled) >= MAX_ENTRIES:
            self.compiled.clear()
        self.compiled[key] = (compiled, constants)


def hook_set(hook) -> bool:
    """Whether a launch hook would do anything. Triton 3.4 and later keep each hook as a
    ``HookChain`` that is never None, only empty (its ``calls``) until a profiler adds one."""
    return hook is not None and bool(getattr(hook, "calls", True))


def cached_launcher(kernel, tensors: int):
    """A ``CachedLauncher`` for compiled Triton; under the interpreter the kernel itself (it
    hands back no compiled kernel to cache)."""
    from .fused_triton import facts

    if facts().interpreting:
        return kernel
    return CachedLauncher(kernel, tensors)



def launcher_of(load_kernel, tensors: int):
    """A kernel module's ``_launcher()``: ``cached_launcher(load_kernel(), tensors)``, made at
    its first call (the kernel's import, and Triton's, wait until a launch needs them)."""
    made: list = []

    def launcher():
        if not made:
            made.append(cached_launcher(load_kernel(), tensors))
        return made[0]

    return launcher
