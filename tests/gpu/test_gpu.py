"""GPU tier: the fused kernel, the no-Triton fallback and torch.compile on real CUDA hardware,
and a full-size sampling smoke test through real ComfyUI. Skipped, with the reason, without
CUDA (CI never has one); run on a GPU machine with
`python -m pytest tests/gpu tests/core -m gpu` (core tests mark their CUDA cases `gpu`).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from core.compiled_ops import pack_ops_when_compiled

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="no CUDA device: the GPU tier runs on a GPU machine"),
]
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed")

# (batch, heads, tokens, d, alpha, beta, dtype, what): the shapes and settings that differ
CASES = [
    (2, 10, 1024, 64, 1.05, 3.0, torch.float16, "SDXL level"),
    (2, 10, 1024, 64, 1.05, 3.0, torch.bfloat16, "SDXL level"),
    (2, 10, 1000, 64, 0.95, 3.0, torch.float16, "odd length, alpha < 1"),
    (2, 24, 1178, 64, 0.95, 3.0, torch.bfloat16, "SD3 joint, strided qkv"),
    (1, 4, 77, 128, 1.15, 4.0, torch.float16, "d 128"),
    (1, 4, 333, 128, 0.0, 3.0, torch.bfloat16, "alpha 0"),
    (1, 2, 17, 64, -0.5, 3.0, torch.float16, "alpha < 0"),
]
# Δ error over the float64 result rounded to the dtype (what any writer of that dtype pays)
FLOOR_FACTOR = {torch.float16: 2.0, torch.bfloat16: 1.25}


def inputs(batch, heads, tokens, d, dtype, strided=False, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    if strided:  # one joint qkv projection, viewed as q, k, v (SD3's layout)
        qkv = torch.randn(batch, tokens, 3, heads, d, generator=gen, device="cuda")
        q, k, v = (qkv[:, :, i].transpose(1, 2).to(dtype) for i in range(3))
        return q, k, v
    return tuple(torch.randn(batch, heads, tokens, d, generator=gen, device="cuda").to(dtype)
                 for _ in range(3))


def reference(q, k, v, alpha, beta):
    from hopfield_circulation.hopfield import reference as ref

    q, k, v = (t.double() for t in (q, k, v))
    base = torch.softmax(ref.logits(q, k), -1) @ v
    return ref.blend(base, ref.skew_scaled_attention(q, k, v, alpha), beta), base


def delta_error(out, want, base):
    delta = (want - base).norm()
    return float((out.double() - want).norm() / delta), float(
        (want.to(out.dtype).double() - want).norm() / delta)


@needs_triton
@pytest.mark.parametrize("case", CASES, ids=[f"{c[-1]}-{c[6]}".replace(" ", "_") for c in CASES])
def test_fused_kernel_against_float64(case):
    from hopfield_circulation.hopfield.fused_triton import fused_skew_circulation

    batch, heads, tokens, d, alpha, beta, dtype, what = case
    q, k, v = inputs(batch, heads, tokens, d, dtype, strided="strided" in what)
    want, base = reference(q, k, v, alpha, beta)
    err, floor = delta_error(fused_skew_circulation(q, k, v, alpha, beta), want, base)
    assert err <= FLOOR_FACTOR[dtype] * floor, f"Δ error {err:.4f}, floor {floor:.4f}"


@needs_triton
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_unselected_rows_and_large_values(dtype, d):
    """bf16 V beyond fp16's range (inf in the kernel's fp16 copy of V): the kernel finds it
    and reruns the programs that met it on V scaled by a power of two."""
    from hopfield_circulation.hopfield.fused_triton import fused_skew_circulation

    q, k, v = inputs(4, 8, 640, d, dtype, seed=3)
    v = v * (3e4 if dtype == torch.bfloat16 else 1.0)  # bf16: beyond fp16's range
    active = torch.tensor([True, False, True, False], device="cuda")
    got = fused_skew_circulation(q, k, v, 1.05, 3.0, active=active)
    want, base = reference(q, k, v, 1.05, 3.0)
    err, floor = delta_error(got[active], want[active], base[active])
    assert err <= FLOOR_FACTOR[dtype] * floor
    plain = base[~active]
    assert (got[~active].double() - plain).norm() <= 1.5 * (
        plain.to(dtype).double() - plain).norm()


@needs_triton
@pytest.mark.parametrize("tune", [False, True], ids=["table", "timed"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_d128_with_an_rtx_40xx_s_shared_memory_runs_on_tiles_that_fit(dtype, tune, monkeypatch):
    """Triton's loader told that a program gets 99 KB (an RTX 30xx/40xx, against Hopper's 227):
    the table's d = 128 tiles raise OutOfResources as they load, and the kernel runs on tiles
    that fit, with tuning off (the next candidate) and on (the fastest that fits), correct,
    never handing over to the two-call path."""
    import warnings
    from collections import defaultdict

    import triton.compiler.compiler as compiler
    from hopfield_circulation.hopfield import fused_tiles, fused_triton

    kernel = fused_triton._kernel()
    if not (hasattr(compiler, "max_shared_mem") and hasattr(kernel, "device_caches")):
        pytest.skip("this Triton checks a kernel's shared memory elsewhere")
    monkeypatch.setattr(compiler, "max_shared_mem", lambda device: 99 * 1024)
    # fresh compiled-kernel objects (from Triton's disk cache): each loads, and checks, anew
    monkeypatch.setattr(kernel, "device_caches", defaultdict(kernel.create_binder))
    launcher = fused_triton._launcher()
    if hasattr(launcher, "compiled"):
        monkeypatch.setattr(launcher, "compiled", {})
    for module, name, fresh in ((fused_tiles, "_TUNED", {}), (fused_tiles, "_UNFIT", set()),
                                (fused_triton, "_DISABLED", []),
                                (fused_triton, "_FACTS", [fused_triton.ProcessFacts(True, False,
                                                                                    tune)])):
        monkeypatch.setattr(module, name, fresh)
    q, k, v = inputs(1, 4, 333, 128, dtype, seed=5)
    want, base = reference(q, k, v, 1.1, 3.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fused_triton.fused_skew_circulation(q, k, v, 1.1, 3.0, fallback=True)
    assert not [w for w in caught if "two-call path" in str(w.message)]  # no hand-over
    table = fused_tiles.default_config(128, dtype)
    assert not fused_triton.disabled() and fused_tiles._unfit_key(q, table) in fused_tiles._UNFIT
    assert fused_triton.settled_config(q) not in (None, table)
    err, floor = delta_error(out, want, base)
    assert err <= FLOOR_FACTOR[dtype] * floor, f"Δ error {err:.4f}, floor {floor:.4f}"


def test_bf16_two_call_without_triton_in_fp16():
    from hopfield_circulation.hopfield.two_call import two_call

    q, k, v = inputs(2, 10, 1024, 64, torch.bfloat16, seed=5)
    want, base = reference(q, k, v, 0.97, 3.0)
    out = two_call(q, k, v, None, 0.97, 3.0).to(torch.bfloat16)
    err, floor = delta_error(out, want, base)
    assert err <= 1.5 * floor


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_eta_from_grams_in_fp32(dtype):
    from hopfield_circulation.hopfield import reference as ref
    from hopfield_circulation.hopfield.symmetry import symmetry_index

    q, k, _ = inputs(2, 10, 1024, 64, dtype, seed=7)
    want = ref.symmetry_index(q.double(), k.double())
    torch.testing.assert_close(symmetry_index(q, k).double(), want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("values", [640, 1280, 100])
def test_retrieval_over_x_builds_no_l_by_l_matrix(dtype, values):
    """The input space's retrievals over X (C channels per head): one call of the
    memory-efficient kernel on CUDA where C is a multiple of 8, chunks of flash calls
    otherwise (skew.attend_any_width); never SDPA's L x L path."""
    from core.tensors_made import TensorsMade
    from hopfield_circulation.hopfield.skew import attend_any_width

    tokens = 1000
    q, k, _ = inputs(2, 10, tokens, 64, dtype, seed=9)
    x = torch.randn(2, tokens, values, device="cuda").to(dtype)
    v = x.unsqueeze(1).expand(-1, 10, -1, -1)
    with TensorsMade() as made:
        got = attend_any_width(q, k, v)
    assert not made.square(tokens), made.square(tokens)
    want = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 8, -1) @ v.double()
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 2e-3}[dtype]  # TF32
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


@needs_triton
@pytest.mark.parametrize("shape, strided", [((2, 10, 4096, 64), False), ((2, 24, 1178, 64), True),
                                            ((1, 4, 333, 128), False), ((1, 3, 17, 64), False)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_eta_kernel_against_float64_and_the_torch_path(shape, strided, dtype):
    from hopfield_circulation.hopfield import eta_triton
    from hopfield_circulation.hopfield import reference as ref
    from hopfield_circulation.hopfield.symmetry import symmetry_index, symmetry_index_torch

    q, k, _ = inputs(*shape, dtype, strided=strided, seed=11)
    assert eta_triton.eligible(q, k)
    got = eta_triton.symmetry_index_triton(q, k)
    want = ref.symmetry_index(q.double(), k.double())
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got, symmetry_index_torch(q, k), rtol=0, atol=1e-5)
    assert torch.equal(symmetry_index(q, k), got)  # the eager dispatch takes the kernel
    # the tokens split into chunks (two launches) agree up to fp32 rounding with the default's
    # one launch
    torch.testing.assert_close(eta_triton.symmetry_index_triton(q, k, splits=7), got, rtol=0,
                               atol=1e-6)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("per_sample", [True, False])
def test_adaptive_in_two_launches_matches_the_torch_coefficients(dtype, per_sample):
    """Eager Adaptive on CUDA: eta by its kernel, coefficients inside the fused kernel; the same
    coefficients as the torch ops and the same output as the kernel fed with those."""
    from hopfield_circulation.hopfield import CirculationSettings, circulate_value_space
    from hopfield_circulation.hopfield.circulation import effective_coefficients
    from hopfield_circulation.hopfield.fused_triton import fused_skew_circulation

    q, k, v = inputs(4, 10, 1024, 64, dtype, seed=13)
    active = torch.tensor([False, False, True, True], device="cuda")
    settings = CirculationSettings(1.2, 5.0, adaptive=True, eta_per_sample=per_sample)
    got = circulate_value_space(q, k, v, None, settings, active)
    alpha, beta, eta_bar = effective_coefficients(q, k, settings)
    torch.testing.assert_close(got.eta_bar, eta_bar, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.alpha, alpha, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.beta, beta, rtol=0, atol=1e-5)
    want = fused_skew_circulation(q, k, v, alpha, beta, active=active)
    torch.testing.assert_close(got.out, want, rtol=0, atol=2e-3)


@needs_triton
@pytest.mark.parametrize("adaptive", [False, True])
def test_compiled_steering_is_one_graph_and_matches_eager(adaptive):
    from hopfield_circulation.hopfield import (
        CirculationSettings,
        circulate_value_space,
        fused_triton,
    )

    q, k, v = inputs(2, 10, 1024, 64, torch.float16, seed=9)
    settings = CirculationSettings(1.05, 3.0, adaptive=adaptive)
    # what patching a model settles outside any trace (fused_triton.settle): else the trace
    # would find the device unasked and take the two-call path
    fused_triton.settle(q.device)
    assert fused_triton.tensor_core_dots(q.device)

    def steer(q, k, v):
        return circulate_value_space(q, k, v, None, settings).out

    wanted = {"fused_skew_circulation": 1} | ({"symmetry_index": 1} if adaptive else {})
    assert pack_ops_when_compiled(steer, q, k, v, tol=2e-3) == wanted


@pytest.mark.parametrize("name", ["sdxl", "sd3-medium"])
@pytest.mark.parametrize("compiled", [False, True])
def test_full_size_sampling_through_comfyui(comfy_host, name, compiled):
    """Full-size model, random weights, 1024², CFG 5, 2 steps: Skew changes the sample and
    stays finite, eager and under TorchCompileModel (inductor), which compiles the model once
    (one graph, no break: a second model call compiling it again costs minutes here)."""
    from hopfield_circulation.nodes.circulation_nodes import SkewCirculation

    from gpu.full_size_models import build, sample

    torch._dynamo.reset()
    model = build(name, torch.float16, torch.device("cuda"))
    alpha = 1.05 if name == "sdxl" else 0.95
    steered = SkewCirculation.execute(model, alpha, 3.0, 0.0, 1.0, "all", "both",
                                      "value").result[0]
    if compiled:
        from comfy_extras.nodes_torch_compile import TorchCompileModel

        steered = TorchCompileModel.execute(steered, "inductor").result[0]
        torch._dynamo.utils.counters.clear()
    out = sample(steered, name, steps=2)
    if compiled:
        counters = torch._dynamo.utils.counters
        assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    base = sample(model, name, steps=2)
    assert torch.isfinite(out).all() and not torch.equal(out, base)


def test_compiled_probe_on_cuda_records_what_eager_records(comfy_host):
    """Skew and the Stability Probe under TorchCompileModel on CUDA (tiny SDXL): the probe's
    op, which declares its write to a CPU tensor, runs inside the CUDA graph as its eager
    path runs: one graph, no break, the same records."""
    from comfy_extras.nodes_torch_compile import TorchCompileModel
    from hopfield_circulation.nodes.circulation_nodes import SkewCirculation
    from hopfield_circulation.nodes.probe_nodes import StabilityProbe
    from hopfield_circulation.probe import find_run
    from host.tiny_models import sample_sdxl, tiny_sdxl

    model = tiny_sdxl()
    steered = SkewCirculation.execute(model, 0.9, 3.0, 0.0, 1.0, "all", "both",
                                      "value").result[0]
    probed, handle = StabilityProbe.execute(steered, "value", 64, 0.0, 1.0, "both",
                                            "all").result
    eager = find_run(handle, sample_sdxl(probed, steps=2))
    probed, handle = StabilityProbe.execute(steered, "value", 64, 0.0, 1.0, "both",
                                            "all").result
    compiled = TorchCompileModel.execute(probed, "inductor").result[0]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    run = find_run(handle, sample_sdxl(compiled, steps=2))
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert run.counts == eager.counts and run.steering_spaces == eager.steering_spaces
    for key, value in eager.sums.items():
        torch.testing.assert_close(run.sums[key], value, rtol=2e-2, atol=2e-3)
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def sdxl_steered(comfy_host):
    """Full-size SDXL (random weights, fp16) and its steered variants over the whole run."""
    from hopfield_circulation.nodes.circulation_nodes import AdaptiveCirculation, SkewCirculation

    from gpu.full_size_models import build

    model = build("sdxl", torch.float16, torch.device("cuda"))
    return model, {
        "skew": SkewCirculation.execute(model, 1.05, 3.0, 0.0, 1.0, "all", "both",
                                        "value").result[0],
        "cond": SkewCirculation.execute(model, 1.05, 3.0, 0.0, 1.0, "all", "cond",
                                        "value").result[0],
        "adaptive": AdaptiveCirculation.execute(model, 1.2, 5.0, 0.0, 1.0, "all", "both",
                                                "value", "per sample").result[0],
    }


def test_steered_sampling_waits_for_the_device_no_more_than_the_baseline(sdxl_steered):
    """Full-size SDXL, fp16, 2 steps: Skew, cond-only and Adaptive Circulation over the whole
    run add not one host synchronisation to what ComfyUI's own sampling makes."""
    from gpu.full_size_models import sample
    from gpu.sync_debug import host_syncs

    model, variants = sdxl_steered
    sample(model, "sdxl", steps=2, size=512)
    baseline = host_syncs(lambda: sample(model, "sdxl", steps=2, size=512))
    for label, patched in variants.items():
        sample(patched, "sdxl", steps=2, size=512)  # compiles, times the tiles (one wait each)
        steered = host_syncs(lambda patched=patched: sample(patched, "sdxl", steps=2, size=512))
        assert len(steered) <= len(baseline), (label, sorted(set(steered) - set(baseline)))


def test_the_probe_waits_for_the_device_only_when_a_run_ends(sdxl_steered):
    """Full-size SDXL, fp16: the Stability Probe over the whole run makes no host
    synchronisation per step; at the run's end it copies the sampler's output to the CPU
    and reads the evaluations' sigmas (two waits, whatever the number of steps)."""
    from hopfield_circulation.nodes.probe_nodes import StabilityProbe

    from gpu.full_size_models import sample
    from gpu.sync_debug import host_syncs

    model, _ = sdxl_steered
    probed, _ = StabilityProbe.execute(model, "value", 64, 0.0, 1.0, "both", "all").result
    sample(probed, "sdxl", steps=2, size=512)  # compiles the kernels (waits of their own)
    extra = []
    for steps in (2, 4):
        baseline = host_syncs(lambda steps=steps: sample(model, "sdxl", steps=steps, size=512))
        probing = host_syncs(lambda steps=steps: sample(probed, "sdxl", steps=steps, size=512))
        extra.append(len(probing) - len(baseline))
    assert extra[0] == extra[1] <= 2, extra


def test_planned_sampling_equals_the_general_path(sdxl_steered, monkeypatch):
    """The calls replayed from their layouts' plans (hopfield/fused_plan.py, on the host's own
    tensors and layout) give the sample the general path gives, bit for bit."""
    from hopfield_circulation.hopfield import fused_plan

    from gpu.full_size_models import sample

    _, variants = sdxl_steered
    for label, patched in variants.items():
        sample(patched, "sdxl", steps=2, size=512)
        planned = sample(patched, "sdxl", steps=2, size=512)
        with monkeypatch.context() as never_planned:
            never_planned.setattr(fused_plan.LayoutPlans, "get", lambda self, layout: None)
            general = sample(patched, "sdxl", steps=2, size=512)
        assert torch.equal(planned, general), label


@needs_triton
@pytest.mark.parametrize("shape, strided", [((2, 10, 4096, 64), False), ((1, 24, 1178, 64), True),
                                            ((1, 3, 77, 64), False), ((1, 4, 333, 128), True)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_probe_kernel_against_float64_and_the_torch_path(shape, strided, dtype):
    from hopfield_circulation.hopfield import stability_triton
    from hopfield_circulation.hopfield.stability import layer_stability, layer_stability_torch

    q, k, x = inputs(*shape, dtype, strided=strided, seed=17)
    x = x * 0.5 + 1.0  # column means larger than the spread, as attention outputs have
    assert stability_triton.eligible(q, k, x)
    fast = layer_stability(q, k, x)  # the eager dispatch takes the kernel
    exact = layer_stability(q.double(), k.double(), x.double())
    torch_path = layer_stability_torch(q, k, x)
    tol = 2e-3 if dtype == torch.float16 else 2e-2
    for name in ("energy", "instability", "align", "eta", "token_map"):
        got = getattr(fast, name)
        torch.testing.assert_close(got.double(), getattr(exact, name), rtol=tol, atol=tol)
        torch.testing.assert_close(got, getattr(torch_path, name), rtol=tol, atol=tol)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_probe_kernel_is_deterministic_and_any_token_split_agrees(dtype):
    """The tokens split into 1, the default or 64 chunks (one per tile): the same measures up
    to fp32 rounding, and bit for bit the same when a call runs again (no atomics: the
    chunks' shares are summed in a fixed order), the second call through the layout's plan
    (prepared launches) and the first through the general path."""
    from hopfield_circulation.hopfield import stability_triton

    q, k, x = inputs(2, 10, 4096, 64, dtype, seed=31)
    x = x * 0.5 + 1.0
    stability_triton._plans.clear()
    default = stability_triton.stability_triton(q, k, x)
    assert any(plan is not None for plan in stability_triton._plans.values())
    again = stability_triton.stability_triton(q, k, x)
    assert torch.equal(default[0], again[0]) and torch.equal(default[1], again[1])
    for splits in (1, 64):
        values, token_map = stability_triton.stability_triton(q, k, x, splits=splits)
        torch.testing.assert_close(values, default[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(token_map, default[1], rtol=1e-4, atol=1e-5)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_probe_plan_on_a_chunks_host_rows_measures_what_its_views_measure(dtype):
    """The probe's default branch measures one CFG chunk: its plan, kept under the chunk's
    host-layout key, launches at the chunk's rows of each host tensor ([B, L, H*d], a UNet's;
    by address, no slice) and gives, bit for bit, what the chunk's [B, H, L, d] views give."""
    from hopfield_circulation.hopfield import stability_triton
    from hopfield_circulation.hopfield.stability import layer_stability

    gen = torch.Generator(device="cuda").manual_seed(35)
    host = [torch.randn(2, 1024, 10 * 64, generator=gen, device="cuda").to(dtype)
            for _ in range(3)]

    def views(t):
        return t.view(2, 1024, 10, 64).transpose(1, 2)

    stability_triton._plans.clear()
    for rows in (slice(1, 2), slice(0, 1)):
        key = stability_triton.rows_layout(rows, *host, 10)
        viewed = [layer_stability(*(views(t)[rows] for t in host), plan_key=key).packed
                  for _ in range(2)]  # the general path, then the plan through the views
        planned = stability_triton.run_planned_rows(key, rows, *host)
        assert planned is not None
        assert torch.equal(planned, viewed[0]) and torch.equal(planned, viewed[1])


@needs_triton
@pytest.mark.parametrize("d", [64, 128])
def test_probe_plan_writing_into_a_runs_slots_measures_what_fresh_tensors_do(d):
    """The probe's planned calls write into slots of a run's output blocks and keep the
    plan's workspace from call to call: each call, on new inputs, gives bit for bit what the
    general path gives it with a fresh workspace and output; the run folds the slots."""
    from hopfield_circulation.hopfield import stability_triton
    from hopfield_circulation.probe.registry import ProbeRun, stacked

    cases = [inputs(2, 10 if d == 64 else 6, 1024, d, torch.float16, seed=40 + seed)
             for seed in range(4)]
    fresh = []
    for q, k, x in cases:  # the general path each time: a workspace and output of its own
        stability_triton._plans.clear()
        fresh.append(stability_triton.stability_packed(q, k, x))
    stability_triton._plans.clear()
    key = stability_triton.host_layout(*cases[0])
    stability_triton.stability_packed(*cases[0], plan_key=key)  # plans the layout
    plan = stability_triton.ready_plan(key)
    assert plan is not None
    run = ProbeRun(1)
    slots = []
    for q, k, x in cases:
        slot = run.next_slot("layer", plan.out_shape, plan.torch_device)
        assert plan.launch_into(q.data_ptr(), k.data_ptr(), x.data_ptr(), slot.address)
        slots.append(slot)
    assert len(plan.workspaces) == 1
    assert torch.equal(stacked(slots), torch.stack(fresh))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compiled_probe_measures_are_the_eager_kernels(dtype):
    """Under torch.compile (inductor, fullgraph) an eligible call is the registered op, which
    runs the probe's kernels: the eager kernels' result, bit for bit, on SD3's strided joint
    qkv (the views the probe hands over), and the op once in one graph."""
    from hopfield_circulation.hopfield import stability_triton
    from hopfield_circulation.hopfield.stability import layer_stability

    q, k, x = inputs(1, 24, 1178, 64, dtype, strided=True, seed=19)
    assert stability_triton.eligible(q, k, x)

    def probe(q, k, x):
        return layer_stability(q, k, x).packed

    assert pack_ops_when_compiled(probe, q, k, x) == {"stability_packed": 1}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_probe_measures_on_tensor_cores(dtype):
    """The torch path (what other widths use, and the kernels' fallback): products into
    fp32."""
    from hopfield_circulation.hopfield.stability import layer_stability, layer_stability_torch

    q, k, x = inputs(2, 10, 1024, 64, dtype, seed=11)
    exact = layer_stability(q.double(), k.double(), x.double())
    fast = layer_stability_torch(q, k, x)
    tol = 2e-3 if dtype == torch.float16 else 2e-2
    for name in ("energy", "instability", "align", "eta"):
        torch.testing.assert_close(getattr(fast, name).double(), getattr(exact, name),
                                   rtol=tol, atol=tol)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cached_launches_match_tritons_own(dtype):
    """After its first launch per specialisation, each kernel goes straight to its compiled
    launcher (hopfield/triton_launch.py): the same outputs, bit for bit, as Triton's own
    launch, and no further trip through Triton's binder, including for a misaligned view."""
    from hopfield_circulation.hopfield import eta_triton, fused_triton, stability_triton

    q, k, v = inputs(2, 10, 1000, 64, dtype, strided=True, seed=23)
    calls = {
        fused_triton: lambda q: fused_triton.fused_skew_circulation(q, k, v, 1.05, 3.0),
        eta_triton: lambda q: eta_triton.symmetry_index_triton(q, k),
        stability_triton: lambda q: stability_triton.stability_triton(q, k, v)[0],
    }
    misaligned = torch.empty(q.numel() + 1, dtype=dtype, device="cuda")[1:].view(
        q.shape).copy_(q)  # 2 bytes off: Triton specialises it apart
    for module, call in calls.items():
        launchers = {fused_triton: lambda: [fused_triton._launcher()],
                     eta_triton: lambda: [eta_triton._launcher(), eta_triton._reduce_launcher()],
                     stability_triton: stability_triton.launchers}[module]()
        for query in (q, misaligned):
            for launcher in launchers:
                launcher.enabled = False
            own = call(query).clone()
            for launcher in launchers:
                launcher.enabled = True
            first = call(query).clone()
            misses = [launcher.misses for launcher in launchers]
            again = call(query)
            assert [launcher.misses for launcher in launchers] == misses, \
                f"{module.__name__}: the cache missed"
            torch.testing.assert_close(first, own, rtol=0, atol=0)
            torch.testing.assert_close(again, own, rtol=0, atol=0)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_planned_launches_match_the_general_path(dtype):
    """A steered call whose layout was planned (hopfield/fused_plan.py) launches the same
    compiled kernel with the same arguments: the same output, bit for bit, for new inputs of
    that layout, all rows steered or only some."""
    from hopfield_circulation.hopfield import fused_plan, fused_triton

    rows = torch.tensor([False, True], device="cuda")
    for strided, active, alpha in ((False, None, 1.05), (True, rows, 0.95)):
        q, k, v = inputs(2, 10, 1000, 64, dtype, strided, seed=31)
        fused_triton.fused_skew_circulation(q, k, v, alpha, 3.0, active=active,
                                            alpha_hint=alpha)
        plan = fused_plan.make_skew_plan(q, k, v, alpha, 3.0, True, active)
        assert plan is not None
        q, k, v = inputs(2, 10, 1000, 64, dtype, strided, seed=32)
        want = fused_triton.fused_skew_circulation(q, k, v, alpha, 3.0, active=active,
                                                   alpha_hint=alpha)
        got = plan.run(q, k, v, active)
        assert got is not None and got.stride() == want.stride() and torch.equal(got, want)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_planned_adaptive_launches_match_the_general_path(dtype):
    """Adaptive Circulation planned (the eta launch, then the fused one): the general path's
    output and coefficients, bit for bit, for new inputs of the layout."""
    from hopfield_circulation.hopfield import fused_plan, fused_triton
    from hopfield_circulation.hopfield.symmetry import symmetry_index

    rows = torch.tensor([False, True], device="cuda")
    for strided, active, per_sample in ((False, None, True), (True, rows, False)):
        def general(q, k, v, per_sample=per_sample, active=active):
            return fused_triton.fused_adaptive_circulation(
                q, k, v, symmetry_index(q, k), 1.2, 5.0, per_sample=per_sample, active=active)

        general(*inputs(2, 10, 1000, 64, dtype, strided, seed=33))
        plan = fused_plan.make_adaptive_plan(*inputs(2, 10, 1000, 64, dtype, strided, seed=33),
                                             1.2, 5.0, per_sample, True, active)
        assert plan is not None
        q, k, v = inputs(2, 10, 1000, 64, dtype, strided, seed=34)
        want, coefficients = general(q, k, v)
        out, planned = plan.run(q, k, v, active)
        eta_bar, alpha, beta = plan.coefficient_rows(planned)
        assert torch.equal(out, want) and out.stride() == want.stride()
        assert torch.equal(torch.stack((eta_bar.flatten(), alpha.flatten(), beta.flatten())),
                           coefficients)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_kernels_run_on_their_tensors_device_not_the_current_one():
    """A model on the second GPU while the first is current (multi-GPU set-ups): each kernel
    launches on its tensors' device and gives what it gives on the first."""
    from hopfield_circulation.hopfield import eta_triton, fused_triton, stability_triton

    q, k, v = inputs(2, 10, 300, 64, torch.float16, seed=29)
    calls = (lambda q, k, v: fused_triton.fused_skew_circulation(q, k, v, 1.05, 3.0),
             lambda q, k, v: eta_triton.symmetry_index_triton(q, k),
             lambda q, k, v: stability_triton.stability_triton(q, k, v)[0])
    with torch.cuda.device(0):
        for call in calls:
            here = call(q, k, v)
            there = call(*(t.to("cuda:1") for t in (q, k, v)))
            assert there.device == torch.device("cuda", 1)
            torch.testing.assert_close(there.cpu(), here.cpu(), rtol=0, atol=0)
