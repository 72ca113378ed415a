"""Cases for the fused Triton kernel under Triton's CPU interpreter (see
tests/core/interpreter.py), against float64 references.

CI has no GPU, so this is where the kernel's math is checked; the interpreter runs the same
kernel source on CPU tensors. It is slow, hence small shapes and small tiles. Compilation for
Hopper is checked statically by benchmarks/compile_hopper.py and timed by
benchmarks/bench_gpu.py.
"""

from __future__ import annotations

import pytest
import torch
from core.compiled_ops import pack_ops_when_compiled
from core.interpreter import require_interpreter

require_interpreter()

from hopfield_circulation.hopfield import (  # noqa: E402
    CirculationSettings,
    circulate_value_space,
    fused_triton,
)
from hopfield_circulation.hopfield import reference as ref  # noqa: E402
from hopfield_circulation.hopfield.circulation import needs_baseline  # noqa: E402
from hopfield_circulation.hopfield.fused_triton import (  # noqa: E402
    LaunchConfig,
    fused_skew_circulation,
)

F64 = torch.float64
SMALL = LaunchConfig(16, 16, 1, 1)  # several key tiles plus a partial one at these lengths
WIDE = LaunchConfig(64, 32, 4, 1)  # fewer interpreter steps for the longer sequences


def rand(*shape, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=F64) * scale


def qkv(batch, heads, length, d, seed, dtype=F64, logit_std=1.6):
    """Inputs whose logits have about ``logit_std`` standard deviation, rounded to ``dtype``;
    returned with their exact float64 values (the reference sees what the kernel sees)."""
    scale = logit_std**0.5
    q, k = (rand(batch, heads, length, d, seed=seed + i, scale=scale) for i in (0, 1))
    v = rand(batch, heads, length, d, seed=seed + 2)
    low = tuple(t.to(dtype) for t in (q, k, v))
    return low, tuple(t.double() for t in low)


def expected(q, k, v, alpha, beta, norm_match=True):
    """Literal float64: softmax(M) V, softmax(M_sym + alpha M_skew) V, blend, norm match."""
    base = torch.softmax(ref.logits(q, k), -1) @ v
    return ref.blend(base, ref.skew_scaled_attention(q, k, v, alpha), beta, norm_match), base


@pytest.mark.parametrize("length, d, alpha, config", [
    (1, 64, 1.05, SMALL),
    (37, 64, 1.05, SMALL),
    (37, 64, 0.9, SMALL),  # alpha < 1
    (37, 64, 0.0, SMALL),  # purely symmetric logits
    (37, 64, -1.5, SMALL),  # c1 < 0: c1 stays out of the perturbed logits' scale
    (37, 64, -0.99, SMALL),  # c1 = 0.005 moved into that scale: c2 / c1 = 199
    (37, 64, 3.0, SMALL),  # c2 < 0, large
    (77, 128, 1.05, SMALL),  # 64 + 13
    (77, 128, -1.5, SMALL),
    (218, 64, 0.95, WIDE),  # SD3-like: 154 text + 64 image tokens, one joint sequence
    (218, 128, 1.2, WIDE),
])
def test_fp32_matches_float64_reference(length, d, alpha, config):
    (q, k, v), (q64, k64, v64) = qkv(2, 2, length, d, seed=length + d, dtype=torch.float32)
    got = fused_skew_circulation(q, k, v, alpha, 3.0, config=config)
    assert got.dtype == torch.float32 and got.shape == q.shape
    torch.testing.assert_close(got.double(), expected(q64, k64, v64, alpha, 3.0)[0],
                               rtol=1e-4, atol=2e-5)


def test_peaky_logits_stay_stable():
    """Logits with std ~25: the online softmax must rescale, not overflow."""
    (q, k, v), (q64, k64, v64) = qkv(1, 2, 45, 64, seed=5, dtype=torch.float32, logit_std=25.0)
    got = fused_skew_circulation(q, k, v, 1.1, 3.0, config=SMALL)
    torch.testing.assert_close(got.double(), expected(q64, k64, v64, 1.1, 3.0)[0],
                               rtol=1e-4, atol=5e-5)


# Relative error of the steering change Δ = out - baseline against float64, at alpha = 0.97
# (the hard case: Δ is a few % of the output). The floor is the float64 result rounded to the
# dtype: no kernel that writes its output in that dtype can do better. fp16: the rounded
# difference of the two softmaxes' P (for P V) adds a little. bf16: P V runs in fp16 too, so the
# result sits at the floor (P rounded to bf16 would be 2-3x the floor). Under the interpreter
# bf16 products run in fp32, exactly what the tensor cores compute.
@pytest.mark.parametrize("length, d, config", [(96, 64, LaunchConfig(32, 32, 1, 1)),
                                               (77, 128, SMALL)])
@pytest.mark.parametrize("dtype, floor_factor, limit", [
    (torch.float16, 2.0, 0.01),
    (torch.bfloat16, 1.3, 0.04),
])
def test_low_precision_keeps_the_steering_change(dtype, floor_factor, limit, length, d, config):
    (q, k, v), (q64, k64, v64) = qkv(1, 2, length, d, seed=8, dtype=dtype)
    want, base = expected(q64, k64, v64, 0.97, 3.0)
    delta = want - base
    got = fused_skew_circulation(q, k, v, 0.97, 3.0, config=config)
    assert got.dtype == dtype
    err = ((got.double() - want).norm() / delta.norm()).item()
    floor = ((want.to(dtype).double() - want).norm() / delta.norm()).item()
    assert err < floor_factor * floor and err < limit, (
        f"{dtype}: Δ error {err:.4f}, rounding floor {floor:.4f}")


def runtime_tiles():
    """Every tile the runtime may launch (hopfield/fused_tiles.py): the table's, the timed
    candidates, and the compact ones a GPU short of shared memory times."""
    from hopfield_circulation.hopfield import fused_tiles

    for d in (64, 128):
        found = {fused_tiles.default_config(d, t) for t in (torch.float16, torch.bfloat16)}
        found |= {*fused_tiles.TILE_CANDIDATES[d], *fused_tiles.COMPACT_CANDIDATES[d]}
        yield from ((d, c) for c in sorted(found, key=lambda c: tuple(vars(c).values())))


@pytest.mark.parametrize("d, config", list(runtime_tiles()),
                         ids=lambda x: f"{x.block_m}x{x.block_n}" if hasattr(x, "block_m")
                         else f"d{x}")
@pytest.mark.parametrize("dtype, floor_factor", [(torch.float16, 2.0), (torch.bfloat16, 1.3)])
def test_every_tile_the_runtime_may_launch_keeps_the_steering_change(dtype, floor_factor, d,
                                                                     config):
    """150 tokens: partial query and key tiles at every tile size (warps and stages only
    matter on a GPU)."""
    (q, k, v), (q64, k64, v64) = qkv(1, 2, 150, d, seed=13, dtype=dtype)
    want, base = expected(q64, k64, v64, 0.97, 3.0)
    delta = want - base
    got = fused_skew_circulation(q, k, v, 0.97, 3.0, config=config)
    err = ((got.double() - want).norm() / delta.norm()).item()
    floor = ((want.to(dtype).double() - want).norm() / delta.norm()).item()
    assert err < floor_factor * floor, f"Δ error {err:.4f}, rounding floor {floor:.4f}"


# Each side of alpha = 1 accumulates differently (fused_triton.accumulation_form): the
# difference of the two softmaxes anchored on the peakier one, or (alpha < 0) the two apart.
# fp16 Δ error over the rounding floor, flat to peaked logits: with the two rounded apart
# everywhere it reached 3-4x near alpha = 1 on flat logits (the H200 measured the same).
@pytest.mark.parametrize("alpha", [-0.5, 0.0, 0.6, 0.95, 1.05, 1.3, 2.5])
@pytest.mark.parametrize("logit_std", [1.0, 2.5, 6.0])
def test_fp16_steering_change_near_its_floor_on_both_sides_of_alpha_one(alpha, logit_std):
    (q, k, v), (q64, k64, v64) = qkv(1, 2, 200, 64, seed=21, dtype=torch.float16,
                                     logit_std=logit_std)
    want, base = expected(q64, k64, v64, alpha, 3.0)
    delta = (want - base).norm()
    err = ((fused_skew_circulation(q, k, v, alpha, 3.0, config=WIDE).double() - want).norm()
           / delta).item()
    floor = ((want.to(torch.float16).double() - want).norm() / delta).item()
    bound = 1.6 if abs(alpha - 1.0) <= 0.05 else 2.6
    assert err < bound * floor, f"Δ error {err:.5f}, rounding floor {floor:.5f}"


def test_a_tensor_alpha_takes_its_users_side_from_the_hint():
    """Per-sample alphas (adaptive, compiled graphs) carry the user's alpha as a hint: below 1
    the kernel anchors on the circulation-scaled softmax, as for a number."""
    (q, k, v), _ = qkv(2, 2, 70, 64, seed=22, dtype=torch.float16, logit_std=6.0)
    alphas = torch.full((2, 1, 1, 1), 0.6)
    by_number = fused_skew_circulation(q, k, v, 0.6, 3.0, config=WIDE)
    hinted = fused_skew_circulation(q, k, v, alphas, 3.0, config=WIDE, alpha_hint=0.6)
    # A number's launch also moves c1 into the perturbed logits' scale (FOLD_C1), which a
    # tensor's cannot: their logits round differently in fp32, which moves a few outputs by
    # one fp16 step; another accumulation form moves a third of them.
    assert (hinted != by_number).float().mean() < 0.01
    torch.testing.assert_close(hinted, by_number, rtol=2.0**-10, atol=2.0**-14)
    assert fused_triton.accumulation_form(0.6) == (True, True)
    assert fused_triton.accumulation_form(1.0) == (True, False)
    assert fused_triton.accumulation_form(-0.1) == (False, False)
    unhinted = fused_skew_circulation(q, k, v, alphas, 3.0, config=WIDE)  # side unknown: apart
    assert fused_triton.accumulation_form(float("nan")) == (False, False)
    assert (unhinted != by_number).float().mean() > 0.1


@pytest.mark.parametrize("d", [64, 128])
def test_bf16_values_beyond_fp16_range_are_scaled_not_clipped(d):
    """bf16 P V runs in fp16: a head whose |V| reaches 1e6 is scaled by a power of two, found
    in the kernel (its fp16 copy of V holds inf there), at either head width."""
    (q, k, v), (q64, k64, v64) = qkv(1, 2, 40, d, seed=9, dtype=torch.bfloat16)
    v = v.clone()
    v[0, 1] *= 1e6  # head 1 only: head 0 keeps scale 1
    v64 = v.double()
    got = fused_skew_circulation(q, k, v, 1.1, 3.0, config=SMALL)
    want = expected(q64, k64, v64, 1.1, 3.0)[0]
    assert torch.isfinite(got).all()
    for h in range(2):
        rel = (got[0, h].double() - want[0, h]).norm() / want[0, h].norm()
        assert rel < 4e-3, f"head {h}: relative error {rel:.2e}"


@pytest.mark.parametrize("where", ["first key tile", "last, partial key tile"])
@pytest.mark.parametrize("rows", ["steered", "plain (unselected sample)"])
def test_one_bf16_value_beyond_fp16_range_reruns_only_its_program(where, rows):
    """No pass over V precedes the kernel: a single |v| >= 2^16 (inf in fp16) anywhere in a
    head's keys makes that head's programs sweep V and run again on V scaled down; values
    under 2^16 convert exactly and need no scaling."""
    (q, k, v), _ = qkv(2, 2, 40, 64, seed=17, dtype=torch.bfloat16)
    v = v.clone()
    v[:, 0] *= 2.0**14  # head 0: |v| up to ~2^16 but under it: fp16 holds every value
    v[:, 1, 3 if where == "first key tile" else 37, 5] = 3.0e6  # head 1: one value beyond it
    q64, k64, v64 = q.double(), k.double(), v.double()
    active = torch.tensor([True, rows == "steered"])
    got = fused_skew_circulation(q, k, v, 1.1, 3.0, active=active, config=SMALL)
    assert torch.isfinite(got).all()
    want = expected(q64, k64, v64, 1.1, 3.0)[0]
    plain = torch.softmax(ref.logits(q64, k64), -1) @ v64
    for b in range(2):
        reference = want[b] if active[b] else plain[b]
        for h in range(2):
            rel = (got[b, h].double() - reference[h]).norm() / reference[h].norm()
            floor = (reference[h].to(torch.bfloat16).double() - reference[h]).norm() \
                / reference[h].norm()
            assert rel < 1.5 * floor, f"sample {b}, head {h}: {rel:.2e} (floor {floor:.2e})"


@pytest.mark.parametrize("layout, d", [("heads", 64), ("joint qkv", 64), ("heads", 128)])
def test_bf16_reads_v_converted_before_the_launch_with_the_same_bits(layout, d, monkeypatch):
    """bf16 reads V as an fp16 copy made before the launch, where each program converted every
    V tile itself: the same output bit for bit, on steered and plain rows, with a head whose
    one value beyond fp16's range (inf in the copy) makes it rerun on V scaled from the bf16
    values, with values in fp16's subnormal range, and on SD3's strided joint views."""
    gen = torch.Generator().manual_seed(29)
    if layout == "joint qkv":
        qkv_ = torch.randn(2, 40, 3, 2, d, generator=gen).to(torch.bfloat16)
        q, k, v = (qkv_[:, :, i].transpose(1, 2) for i in range(3))
    else:
        q, k, v = torch.randn(3, 2, 2, 40, d, generator=gen).to(torch.bfloat16).unbind(0)
    v[:, 1, 37, 5] = 3.0e6  # head 1: inf in fp16
    v[:, 0] *= 2.0**-20  # head 0: values in fp16's subnormals, rounded alike
    active = torch.tensor([True, False])
    assert fused_triton.v16_copy(q)
    got = [fused_skew_circulation(q, k, v, 1.1, 3.0, active=rows, config=SMALL)
           for rows in (None, active)]
    monkeypatch.setattr(fused_triton, "v16_copy", lambda q: False)
    want = [fused_skew_circulation(q, k, v, 1.1, 3.0, active=rows, config=SMALL)
            for rows in (None, active)]
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all() and torch.equal(g, w)


def test_per_sample_coefficients():
    """Adaptive mode: alpha and beta are [B, 1, 1, 1] device tensors, read in the kernel."""
    (q, k, v), (q64, k64, v64) = qkv(3, 2, 29, 64, seed=4, dtype=torch.float32)
    alphas = torch.tensor([1.05, 0.9, -1.5]).reshape(3, 1, 1, 1)
    betas = torch.tensor([3.0, 2.0, 5.0]).reshape(3, 1, 1, 1)
    got = fused_skew_circulation(q, k, v, alphas, betas, config=SMALL)
    for b in range(3):
        want = expected(q64[b:b + 1], k64[b:b + 1], v64[b:b + 1], alphas[b].item(),
                        betas[b].item())[0]
        torch.testing.assert_close(got[b:b + 1].double(), want, rtol=1e-4, atol=2e-5)


def test_one_value_tensors_broadcast_and_mix_with_numbers():
    (q, k, v), (q64, k64, v64) = qkv(2, 1, 20, 64, seed=14, dtype=torch.float32)
    got = fused_skew_circulation(q, k, v, torch.tensor([1.2]), 4.0, config=SMALL)
    torch.testing.assert_close(got.double(), expected(q64, k64, v64, 1.2, 4.0)[0], rtol=1e-4,
                               atol=2e-5)
    with pytest.raises(ValueError, match="alpha has 3 values for batch 2"):
        fused_skew_circulation(q, k, v, torch.ones(3), 4.0, config=SMALL)


def test_without_norm_match():
    (q, k, v), (q64, k64, v64) = qkv(1, 2, 29, 64, seed=11, dtype=torch.float32)
    got = fused_skew_circulation(q, k, v, 1.3, 2.0, norm_match=False, config=SMALL)
    torch.testing.assert_close(got.double(), expected(q64, k64, v64, 1.3, 2.0, False)[0],
                               rtol=1e-4, atol=2e-5)


def test_non_contiguous_inputs():
    """SD3 hands q, k, v as strided views of one fused qkv projection: no copies needed, and
    the output comes in the token-major layout the host returns ([B, L, H, d] in memory), so
    handing it back as [B, L, H*d] is a view."""
    qkv_proj = rand(2, 33, 3, 2, 64, seed=7).float()  # [B, L, 3, H, d]
    q, k, v = (qkv_proj[:, :, i].transpose(1, 2) for i in range(3))  # [B, H, L, d] views
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    got = fused_skew_circulation(q, k, v, 1.1, 3.0, config=SMALL)
    assert got.transpose(1, 2).is_contiguous()
    host = got.transpose(1, 2).flatten(2)
    assert host.data_ptr() == got.data_ptr()  # a view
    unet_q = rand(2, 33, 2 * 64, seed=8).float().view(2, 33, 2, 64).transpose(1, 2)
    assert fused_skew_circulation(unet_q, unet_q, unet_q, 1.1, 3.0,
                                  config=SMALL).transpose(1, 2).is_contiguous()
    want = expected(q.double(), k.double(), v.double(), 1.1, 3.0)[0]
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=2e-5)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy on inf
def test_non_finite_values_become_zero_like_blend_retrievals():
    (q, k, v), _ = qkv(1, 2, 20, 64, seed=21, dtype=torch.float32)
    v = v.clone()
    v[0, 1, 3] = float("inf")  # head 1 retrieves inf/nan everywhere
    got = fused_skew_circulation(q, k, v, 1.1, 3.0, config=SMALL)
    two_call = circulate_value_space(q, k, v, torch.nn.functional.scaled_dot_product_attention(
        q, k, v), CirculationSettings(1.1, 3.0, kernel="two_call")).out
    assert torch.isfinite(got).all()
    assert (got[0, 1] == 0).all() and (two_call[0, 1] == 0).all()
    torch.testing.assert_close(got[0, 0], two_call[0, 0], rtol=1e-4, atol=1e-5)


def test_dispatch_through_circulate_value_space():
    (q, k, v), _ = qkv(2, 2, 24, 64, seed=31, dtype=torch.float32)
    base = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    for adaptive in (False, True):
        fused = CirculationSettings(1.1, 3.0, adaptive=adaptive, kernel="fused")
        assert not needs_baseline(q, k, v, fused)  # one pass computes its own baseline
        got = circulate_value_space(q, k, v, None, fused)
        two_call = CirculationSettings(1.1, 3.0, adaptive=adaptive, kernel="two_call")
        want = circulate_value_space(q, k, v, base, two_call)
        torch.testing.assert_close(got.out, want.out, rtol=1e-4, atol=1e-5)
        if adaptive:
            torch.testing.assert_close(got.eta_bar, want.eta_bar)
    # Unselected samples: the kernel writes their plain attention output in the same launch, so
    # the host's call is not needed; when the host's output exists anyway (an override chained
    # before ours), those rows are the host's bit for bit.
    active = torch.tensor([True, False])
    settings = CirculationSettings(1.1, 3.0, kernel="fused")
    assert not needs_baseline(q, k, v, settings, active)
    everyone = circulate_value_space(q, k, v, None, settings).out
    alone = circulate_value_space(q, k, v, None, settings, active).out
    assert torch.equal(alone[0], everyone[0])
    torch.testing.assert_close(alone[1], base[1], rtol=1e-4, atol=1e-5)
    chained = circulate_value_space(q, k, v, base, settings, active).out
    assert torch.equal(chained[1], base[1]) and torch.equal(chained[0], everyone[0])
    with pytest.raises(ValueError, match="active must be bool"):
        fused_skew_circulation(q, k, v, 1.1, 3.0, active=torch.ones(3, dtype=torch.bool))


@pytest.mark.parametrize("per_sample", [True, False])
def test_adaptive_coefficients_come_from_eta_inside_the_kernel(per_sample, monkeypatch):
    """fused_adaptive_circulation derives eta-bar, alpha_eff and beta_eff from eta_M [B, H] in
    the launch itself: the recorded coefficients are eq. 37-41's, the output is the float64
    blend with them, unselected samples get the plain retrieval, and circulate_value_space
    reports the same coefficients as the torch path."""
    from hopfield_circulation.hopfield import symmetry_index
    from hopfield_circulation.hopfield.fused_triton import fused_adaptive_circulation

    (q, k, v), (q64, k64, v64) = qkv(3, 2, 37, 64, seed=71, dtype=torch.float32)
    eta = symmetry_index(q, k)
    active = torch.tensor([True, False, True])
    out, coefficients = fused_adaptive_circulation(q, k, v, eta, 1.3, 4.0, per_sample=per_sample,
                                                   active=active, config=SMALL)
    eta64 = ref.symmetry_index(q64, k64)
    eta_bar = eta64.mean(-1) if per_sample else eta64.mean().reshape(1)
    want = torch.stack((eta_bar, 1 + 0.3 * eta_bar, 4.0 * (1 - eta_bar)))
    torch.testing.assert_close(coefficients.double(), want, rtol=0, atol=1e-6)
    for b in range(3):
        e = eta_bar[b if per_sample else 0].item()
        steered, plain = expected(q64[b], k64[b], v64[b], 1 + 0.3 * e, 4.0 * (1 - e))
        torch.testing.assert_close(out[b].double(), steered if active[b] else plain,
                                   rtol=1e-4, atol=2e-5)
    settings = CirculationSettings(1.3, 4.0, adaptive=True, eta_per_sample=per_sample,
                                   kernel="fused")
    fused = circulate_value_space(q, k, v, None, settings, active)
    base = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    two_call = circulate_value_space(q, k, v, base, CirculationSettings(
        1.3, 4.0, adaptive=True, eta_per_sample=per_sample, kernel="two_call"), active)
    for got, want in ((fused.eta_bar, two_call.eta_bar), (fused.alpha, two_call.alpha),
                      (fused.beta, two_call.beta)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="eta must be fp32"):
        fused_adaptive_circulation(q, k, v, eta.double(), 1.3, 4.0)
    # More eta values than one launch averages in-kernel: the coefficients by torch ops.
    monkeypatch.setattr(fused_triton, "MAX_ETA_LANES", 2)
    out_torch, coefficients_torch = fused_adaptive_circulation(
        q, k, v, eta, 1.3, 4.0, per_sample=per_sample, active=active, config=SMALL)
    torch.testing.assert_close(coefficients_torch, coefficients, rtol=0, atol=1e-6)
    torch.testing.assert_close(out_torch, out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_unselected_samples_get_the_plain_retrieval_in_the_same_launch(dtype):
    """Cond-only steering at 2 samples per branch: rows of the other branch are softmax(QK^T)V
    at the dtype's rounding, the chosen ones the full blend."""
    (q, k, v), _ = qkv(4, 2, 77, 64, seed=43, dtype=dtype)
    active = torch.tensor([False, False, True, True])
    got = fused_skew_circulation(q, k, v, 1.05, 3.0, active=active)
    plain = torch.softmax(ref.logits(q.double(), k.double()), -1) @ v.double()
    steered = fused_skew_circulation(q, k, v, 1.05, 3.0)
    assert torch.equal(got[2:], steered[2:])
    floor = (plain[:2].to(dtype).double() - plain[:2]).norm()
    assert (got[:2].double() - plain[:2]).norm() < 1.5 * floor


def test_auto_keeps_cpu_and_fp32_on_the_two_call_path():
    (q, k, v), _ = qkv(1, 1, 20, 64, seed=41, dtype=torch.float32)
    assert not fused_triton.auto_eligible(q, k, v)  # CPU tensors, and the interpreter is on
    auto = CirculationSettings(1.1, 3.0)
    assert needs_baseline(q, k, v, auto)
    with pytest.raises(ValueError, match="needs the baseline"):
        circulate_value_space(q, k, v, None, auto)


def test_clear_errors(monkeypatch):
    (q, k, v), _ = qkv(1, 1, 20, 64, seed=51, dtype=torch.float32)
    with pytest.raises(ValueError, match="d in"):
        fused_skew_circulation(q[..., :48], k[..., :48], v[..., :48], 1.1, 3.0)
    with pytest.raises(ValueError, match="one shape"):
        fused_skew_circulation(q, k[:, :, :10], v[:, :, :10], 1.1, 3.0)  # cross-attention
    with pytest.raises(ValueError, match="kernel must be one of"):
        CirculationSettings(kernel="fast")
    monkeypatch.setattr(fused_triton, "_FACTS", [fused_triton.ProcessFacts(True, False)])
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        circulate_value_space(q, k, v, None, CirculationSettings(1.1, 3.0, kernel="fused"))


@pytest.mark.parametrize("adaptive", [False, True])
def test_torch_compile_calls_the_kernel_as_one_op(adaptive):
    """Under torch.compile (inductor, fullgraph: no graph break) the kernel is the registered
    op, called with the scalar types its schema declares, and gives the eager result."""
    (q, k, v), _ = qkv(2, 2, 40, 64, seed=61, dtype=torch.float16)
    active = torch.tensor([True, False])
    settings = CirculationSettings(1.1, 3.0, adaptive=adaptive, kernel="fused")

    def steer(q, k, v, active):
        return circulate_value_space(q, k, v, None, settings, active).out

    assert pack_ops_when_compiled(steer, q, k, v, active, tol=2e-3)["fused_skew_circulation"] == 1


def flux_joint_call(text, grid, d, seed, dtype, gain=1.5):
    """A Flux joint call as the override receives it (skip_reshape): q, k, v from one fused
    projection [B, L, 3, H, d] of [text; image] tokens; q and k RMS-normed per head (QKNorm,
    gain ``gain``) and rotated pairwise by 2-D RoPE over the image rows and columns (text at
    position 0); v a strided view. Returns the dtype tensors and their exact float64 values."""
    h, w = grid
    fused = rand(1, text + h * w, 3, 2, d, seed=seed).to(dtype)
    q, k, v = fused.permute(2, 0, 3, 1, 4)  # [B, H, L, d] views, as Flux's blocks make them
    rows = torch.cat([torch.zeros(text), torch.arange(h).repeat_interleave(w)]).to(F64)
    cols = torch.cat([torch.zeros(text), torch.arange(w).repeat(h)]).to(F64)
    freqs = 1.0 / 10000 ** (torch.arange(d // 4, dtype=F64) / (d // 4))
    angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=-1)  # [L, d / 2]
    cos, sin = angles.cos(), angles.sin()

    def norm_and_rope(t):
        t = t.double()
        t = gain * t / t.pow(2).mean(-1, keepdim=True).sqrt()
        a, b = t[..., 0::2], t[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2).to(dtype)

    q, k = norm_and_rope(q), norm_and_rope(k)
    return (q, k, v), (q.double(), k.double(), v.double())


def assert_exact_or_at_the_rounding_floor(got, want, base, dtype):
    """fp32: the float64 result to fp32 accuracy; 16-bit: the steering change Δ = want - base
    within 1.3x the error of rounding the exact result to ``dtype`` (and under 4 %)."""
    if dtype == torch.float32:
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=2e-5)
        return
    delta = want - base
    err = ((got.double() - want).norm() / delta.norm()).item()
    floor = ((want.to(dtype).double() - want).norm() / delta.norm()).item()
    assert err < 1.3 * floor and err < 0.04, f"Δ error {err:.4f}, rounding floor {floor:.4f}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flux_shaped_joint_call_at_head_dim_128(dtype):
    """Head dim 128, qk-normed and RoPE'd q, k, a strided v, 8 text + 6 x 6 image tokens."""
    (q, k, v), (q64, k64, v64) = flux_joint_call(8, (6, 6), 128, seed=71, dtype=dtype)
    assert not v.is_contiguous()
    want, base = expected(q64, k64, v64, 0.95, 3.0)
    got = fused_skew_circulation(q, k, v, 0.95, 3.0, config=SMALL)
    assert got.dtype == dtype and got.shape == q.shape
    assert_exact_or_at_the_rounding_floor(got, want, base, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_major_call_at_head_dim_128(dtype):
    """HiDream's layout: q, k, v handed over as [B, L, H*d] with ``heads`` (the hook's
    [B, H, L, d] views of them), head dim 128, 30 image tokens then 24 text tokens; the output
    comes back token-major, so the host's [B, L, H*d] is a view of it."""
    (q, k, v), _ = qkv(2, 2, 54, 128, seed=83, dtype=dtype)
    q, k, v = (t.transpose(1, 2).contiguous().view(2, 54, 2, 128).transpose(1, 2)
               for t in (q, k, v))
    q64, k64, v64 = (t.double() for t in (q, k, v))
    want, base = expected(q64, k64, v64, 1.08, 3.0)
    got = fused_skew_circulation(q, k, v, 1.08, 3.0, config=SMALL)
    assert got.dtype == dtype and got.transpose(1, 2).is_contiguous()
    assert_exact_or_at_the_rounding_floor(got, want, base, dtype)


@pytest.mark.parametrize("dtype, joint, d", [(torch.float16, False, 64), (torch.bfloat16, True, 64),
                                             (torch.bfloat16, False, 128)])
def test_every_row_of_the_gpu_benchmark_runs(dtype, joint, d):
    """benchmarks/bench_gpu.py's per-call rows on tiny inputs (SD3's strided joint views with
    bf16; Flux's head width, ``--shapes d128``), so that a lent device's minutes are not spent
    on a row that fails: every row returns finite values, and Skew's fused rows agree with its
    two-call path."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_gpu

    gen = torch.Generator().manual_seed(83)
    if joint:
        qkv_ = torch.randn(2, 40, 3, 2, d, generator=gen).to(dtype)
        q, k, v = (qkv_[:, :, i].transpose(1, 2) for i in range(3))
    else:
        q, k, v = torch.randn(3, 2, 2, 40, d, generator=gen).to(dtype).unbind(0)
    rows = bench_gpu.paths(q, k, v)
    assert ("kernel_v_in_loop" in rows) == (dtype == torch.bfloat16)
    two_call = rows["two_call"]().double()
    extra = bench_gpu.extra_paths(q, k, v)
    for name, row in {**rows, **extra}.items():
        got = row()
        for t in got if isinstance(got, tuple) else [getattr(got, "packed", got)]:
            assert torch.isfinite(t).all(), name
        if name in ("fused", "kernel_number_alpha", "kernel_tensor_alpha",
                    "kernel_v_in_loop"):  # Skew, all rows
            err = (got.double() - two_call).abs().max() / two_call.abs().max()
            assert err < 0.02, f"{name}: {err:.4f} off the two-call path"
    # the perturbed retrieval both ways: the same products, V as it is or widened
    wide, narrow = extra["concat_wide_v"]().double(), extra["concat_narrow_v"]().double()
    assert (narrow - wide).abs().max() <= 0.01 * wide.abs().max()
