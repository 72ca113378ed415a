"""The cached Triton launcher (hopfield/triton_launch.py): its key against Triton's own
specialisation, and its launch logic against a stand-in kernel (no GPU needed for either)."""

from __future__ import annotations

import contextlib
import importlib.util
import random
import warnings
from types import SimpleNamespace

import pytest
import torch
from hopfield_circulation.hopfield.fused_triton import FUSED_TENSOR_ARGS as TENSORS
from hopfield_circulation.hopfield.triton_launch import CachedLauncher, hook_set

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed (the launcher wraps its "
                                  "kernels; without it the pack never launches one)")


def triton_binder(kernel):
    """Triton's own binder for ``kernel`` with a Hopper backend (built without a GPU): what
    ``kernel[grid](...)`` specialises a launch on."""
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature
    except ImportError as missing:
        pytest.skip(f"this Triton has no binder to compare against ({missing})")
    backend = make_backend(GPUTarget("cuda", 90, 32))
    return create_function_from_signature(kernel.signature, kernel.params, backend)


STORAGE = {dtype: torch.zeros(4096, dtype=dtype)
           for dtype in (torch.float16, torch.bfloat16, torch.float32)}
INTS = [0, 1, 2, 16, 17, 64, 640, 2**31, -1, 10 * 64 * 4096]


def fused_call(rng: random.Random):
    """An argument list of the fused kernel as _launch builds one (TENSORS tensors, 18 strides,
    alpha, beta, batch, heads, length, scale), with a random dtype and random values."""
    dtype = rng.choice(list(STORAGE))
    tensors = [STORAGE[dtype][:64] for _ in range(TENSORS)]
    ints = [rng.choice(INTS) for _ in range(18)]
    scalars = [1.05, 3.0, 0, 10, 4096, 0.18]
    kwargs = dict(D=64, BLOCK_M=64, BLOCK_N=128, ALPHA_PER_SAMPLE=False, BETA_PER_SAMPLE=False,
                  NORM_MATCH=True, PV_FP16=dtype == torch.bfloat16, HAS_ACTIVE=False,
                  UPCAST=False, PRECISION="tf32", ADAPTIVE=False, ETA_PER_SAMPLE=True,
                  ETA_BLOCK=1, DIFFERENCE=True, ANCHOR_PERT=False, FOLD_C1=True,
                  V16_COPY=False, num_warps=4, num_stages=2)
    return [*tensors, *ints, *scalars], kwargs


def varied(args: list, kwargs: dict, rng: random.Random):
    """``args``/``kwargs`` with one or two things changed where Triton might specialise: a
    tensor's alignment or dtype, an integer, a float passed as an int, a constexpr, an option.
    Small changes of one call, so that many draws share keys and the check has teeth."""
    args, kwargs = list(args), dict(kwargs)
    for _ in range(rng.choice([1, 2])):
        what, i = rng.choice(["offset", "dtype", "int", "scalar", "constexpr"]), \
            rng.randrange(TENSORS)
        if what == "offset":  # elements: 16 B aligned or not, by the dtype's size
            offset = rng.choice([0, 1, 3, 8, 16])
            args[i] = STORAGE[args[i].dtype][offset:offset + 64]
        elif what == "dtype":
            args[i] = STORAGE[rng.choice(list(STORAGE))][:64]
        elif what == "int":
            args[TENSORS + rng.randrange(18)] = rng.choice(INTS)
        elif what == "scalar":  # alpha, beta, batch, heads, length, scale
            j = TENSORS + 18 + rng.randrange(6)
            args[j] = rng.choice([1, 2, 16, 1.0, 2.5, 0.0, 0])
        else:
            key = rng.choice(["D", "BLOCK_N", "ALPHA_PER_SAMPLE", "num_stages"])
            kwargs[key] = {"D": [64, 128], "BLOCK_N": [64, 128],
                           "ALPHA_PER_SAMPLE": [False, True], "num_stages": [2, 3]}[key][i % 2]
    return tuple(args), kwargs


@needs_triton
def test_equal_keys_mean_triton_specialises_alike():
    """Where two launches share a key, Triton specialises them identically (the same compiled
    kernel): 1,000 variations of a few random calls of the fused kernel."""
    from hopfield_circulation.hopfield.fused_triton import _kernel

    kernel = _kernel()
    binder = triton_binder(kernel)
    launcher = CachedLauncher(kernel, TENSORS, enabled=True)
    rng = random.Random(0)
    by_key: dict = {}
    hits = 0
    calls = [fused_call(rng) for _ in range(4)]
    for _ in range(1000):
        args, kwargs = varied(*rng.choice(calls), rng)
        options = {k: v for k, v in kwargs.items() if k not in ("num_warps", "num_stages")}
        _, specialisation, _ = binder(*args, **options)
        spec = (tuple(map(str, specialisation)), kwargs["num_warps"], kwargs["num_stages"])
        key = launcher.key(args, kwargs)
        hits += key in by_key
        seen = by_key.setdefault(key, spec)
        assert seen == spec, f"one key, two specialisations: {seen} and {spec}"
    # the draws varied what Triton specialises on, and shared keys often enough to test
    assert len(by_key) > 100 and hits > 300, (len(by_key), hits)


@needs_triton
def test_new_data_and_new_float_values_reuse_the_entry():
    """What changes from call to call in a sampling run (the tensors' data, alpha and beta,
    the scale) keeps the key, so steady-state launches hit the cache."""
    from hopfield_circulation.hopfield.fused_triton import _kernel

    launcher = CachedLauncher(_kernel(), TENSORS, enabled=True)
    rng = random.Random(1)
    args, kwargs = fused_call(rng)
    moved = tuple(t.clone() if i < TENSORS else t for i, t in enumerate(args))
    floats_changed = (*moved[:-6], *(x + 0.25 if type(x) is float else x
                                     for x in moved[-6:]))
    assert launcher.key(args, kwargs) == launcher.key(floats_changed, kwargs)


class StandIn:
    """A jit'ed kernel's surface: ``[grid](...)`` records a launch by Triton's own path and
    hands back a 'compiled kernel' whose ``run`` records the cached launches."""

    def __init__(self, refuse: bool = False):
        def kernel(a, b, n, scale, X: int, Y: int = 7):  # X, Y: constexprs; Y has a default
            pass

        import inspect

        self.signature = inspect.signature(kernel)
        self.arg_names = list(self.signature.parameters)
        self.jit_launches: list = []
        self.cached_launches: list = []
        stand_in = self

        class Compiled:
            function, packed_metadata = "function", "metadata"

            def run(self, *launch):
                if refuse:
                    raise TypeError("function takes exactly 14 arguments (13 given)")
                stand_in.cached_launches.append(launch)

        self.compiled = Compiled()

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.jit_launches.append((grid, args, kwargs))
            return self.compiled

        return launch


def stand_in_launcher(kernel, hooks=None):
    driver = SimpleNamespace(get_current_device=lambda: 0,
                             get_current_stream=lambda device: 1234)
    hooks = hooks or SimpleNamespace(launch_enter_hook=None, launch_exit_hook=None)
    return CachedLauncher(kernel, 2, enabled=True, runtime=(driver, hooks))


def test_second_launch_goes_straight_to_the_compiled_launcher():
    kernel = StandIn()
    launcher = stand_in_launcher(kernel)
    a, b = torch.zeros(8), torch.zeros(8)
    launcher[(3, 2)](a, b, 5, 0.5, X=1)
    assert len(kernel.jit_launches) == 1 and not kernel.cached_launches
    launcher[(3, 2)](a, b, 5, 0.75, X=1)
    assert len(kernel.jit_launches) == 1
    # grid padded to three axes, the stream, function, metadata, no hooks, then every
    # argument in signature order with the constexprs (and Y's default) last
    assert kernel.cached_launches == [
        (3, 2, 1, 1234, "function", "metadata", None, None, None, a, b, 5, 0.75, 1, 7)]


@pytest.mark.parametrize("change", ["int", "constexpr", "misaligned", "dtype", "int as float"])
def test_what_triton_specialises_on_takes_its_own_path(change):
    kernel = StandIn()
    launcher = stand_in_launcher(kernel)
    store = torch.zeros(64)
    a, b = store[:8], store[8:16]
    launcher[(1,)](a, b, 5, 0.5, X=1)
    changed = {
        "int": lambda: launcher[(1,)](a, b, 1, 0.5, X=1),  # 1 is a constant to Triton
        "constexpr": lambda: launcher[(1,)](a, b, 5, 0.5, X=2),
        "misaligned": lambda: launcher[(1,)](store[1:9], b, 5, 0.5, X=1),
        "dtype": lambda: launcher[(1,)](a.half(), b, 5, 0.5, X=1),
        "int as float": lambda: launcher[(1,)](a, b, 5, 1, X=1),  # int 1, not float 1.0
    }[change]
    changed()
    assert len(kernel.jit_launches) == 2 and not kernel.cached_launches
    changed()  # now known: cached
    assert len(kernel.jit_launches) == 2 and len(kernel.cached_launches) == 1


def test_a_profiler_hook_sends_launches_through_triton():
    kernel = StandIn()
    hooks = SimpleNamespace(launch_enter_hook=None, launch_exit_hook=None)
    launcher = stand_in_launcher(kernel, hooks)
    a, b = torch.zeros(8), torch.zeros(8)
    launcher[(1,)](a, b, 5, 0.5, X=1)
    hooks.launch_enter_hook = print
    launcher[(1,)](a, b, 5, 0.5, X=1)
    assert len(kernel.jit_launches) == 2 and not kernel.cached_launches


class HookChain:
    """Triton 3.4+'s knobs.runtime hooks: never None, a list of calls that starts empty."""

    def __init__(self):
        self.calls = []

    def __call__(self, *args):
        for call in self.calls:
            call(*args)


def test_an_empty_hook_chain_is_no_hook_and_a_filled_one_is():
    kernel = StandIn()
    hooks = SimpleNamespace(launch_enter_hook=HookChain(), launch_exit_hook=HookChain())
    launcher = stand_in_launcher(kernel, hooks)
    a, b = torch.zeros(8), torch.zeros(8)
    launcher[(1,)](a, b, 5, 0.5, X=1)
    launcher[(1,)](a, b, 5, 0.5, X=1)
    assert len(kernel.jit_launches) == 1 and len(kernel.cached_launches) == 1
    hooks.launch_exit_hook.calls.append(print)  # a profiler's hook: Triton's path calls it
    launcher[(1,)](a, b, 5, 0.5, X=1)
    assert len(kernel.jit_launches) == 2 and len(kernel.cached_launches) == 1


def test_the_installed_tritons_hooks_start_empty():
    """What the real Triton holds when nothing profiles (the GPU found every launch of the
    cache sent through Triton's path when an empty HookChain counted as a hook)."""
    triton = pytest.importorskip("triton")
    runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
    if runtime is None:
        pytest.skip("Triton before 3.4 keeps no launch hooks in knobs (the cache is off there)")
    assert not hook_set(runtime.launch_enter_hook)
    assert not hook_set(runtime.launch_exit_hook)


def test_a_refusing_launcher_hands_over_to_triton_once_with_a_warning():
    kernel = StandIn(refuse=True)
    launcher = stand_in_launcher(kernel)
    a, b = torch.zeros(8), torch.zeros(8)
    launcher[(1,)](a, b, 5, 0.5, X=1)
    with pytest.warns(RuntimeWarning, match="refused the cached launch"):
        launcher[(1,)](a, b, 5, 0.5, X=1)
    assert len(kernel.jit_launches) == 2  # the refused launch ran through Triton's path
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        launcher[(1,)](a, b, 5, 0.5, X=1)
    assert len(kernel.jit_launches) == 3 and not launcher.enabled


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("HOPFIELD_CIRCULATION_LAUNCH_CACHE", "0")
    kernel = StandIn()
    launcher = CachedLauncher(kernel, 2)
    a, b = torch.zeros(8), torch.zeros(8)
    for _ in range(2):
        launcher[(1,)](a, b, 5, 0.5, X=1)
    assert len(kernel.jit_launches) == 2 and not kernel.cached_launches


def test_the_cache_stays_bounded(monkeypatch):
    from hopfield_circulation.hopfield import triton_launch

    monkeypatch.setattr(triton_launch, "MAX_ENTRIES", 4)
    kernel = StandIn()
    launcher = stand_in_launcher(kernel)
    a, b = torch.zeros(8), torch.zeros(8)
    for n in range(2, 12):  # ten integer values: ten specialisations
        launcher[(1,)](a, b, n, 0.5, X=1)
    assert 1 <= len(launcher.compiled) <= 4
    launcher[(1,)](a, b, 11, 0.5, X=1)  # the newest is still there
    assert kernel.cached_launches


def test_a_kernel_that_hands_back_nothing_is_launched_by_triton_from_then_on():
    kernel = StandIn()
    kernel.compiled = None  # as the interpreter's launch returns
    launcher = stand_in_launcher(kernel)
    a, b = torch.zeros(8), torch.zeros(8)
    for _ in range(3):
        launcher[(1,)](a, b, 5, 0.5, X=1)
    assert len(kernel.jit_launches) == 3 and not launcher.enabled and not launcher.compiled


class OnDevice:
    """A CUDA tensor's surface as the launcher reads it (a CPU machine has none)."""

    def __init__(self, index: int):
        self.index, self.dtype = index, torch.float16

    def get_device(self) -> int:
        return self.index

    def data_ptr(self) -> int:
        return 4096


def test_tensors_on_another_gpu_are_launched_with_their_device_current(monkeypatch):
    kernel = StandIn()
    launcher = stand_in_launcher(kernel)
    made_current = []

    @contextlib.contextmanager
    def device(index):
        made_current.append(index)
        yield

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", device)
    launcher[(1,)](OnDevice(0), OnDevice(0), 5, 0.5, X=1)
    assert made_current == []  # already current: nothing to switch
    launcher[(1,)](OnDevice(1), OnDevice(1), 5, 0.5, X=1)
    assert made_current == [1]
