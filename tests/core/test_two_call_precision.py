"""The two-call path in low precision, against float64 (no Triton needed).

bf16 recomputes both retrievals in a finer dtype (hopfield/two_call.py) so the steering change
Δ = out - baseline is as accurate as a bf16 output can be; fp16 keeps the host's baseline.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from core.devices import ON_CUDA
from hopfield_circulation.hopfield import CirculationSettings, circulate_value_space
from hopfield_circulation.hopfield import reference as ref
from hopfield_circulation.hopfield.circulation import needs_baseline


def inputs(dtype, seed=3, length=128, d=64, logit_std=2.5):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(1, 2, length, d, generator=gen, dtype=torch.float64) * logit_std**0.5
            for _ in range(2))
    v = torch.randn(1, 2, length, d, generator=gen, dtype=torch.float64)
    return tuple(t.to(dtype) for t in (q, k, v))


def reference_change(q, k, v, alpha, beta):
    q, k, v = (t.double() for t in (q, k, v))
    base = torch.softmax(ref.logits(q, k), -1) @ v
    return ref.blend(base, ref.skew_scaled_attention(q, k, v, alpha), beta), base


@pytest.mark.parametrize("alpha", [0.97, 1.05])
def test_bf16_change_sits_at_the_output_rounding_floor(alpha):
    q, k, v = inputs(torch.bfloat16)
    want, base = reference_change(q, k, v, alpha, 3.0)
    settings = CirculationSettings(alpha, 3.0, kernel="two_call")
    assert not needs_baseline(q, k, v, settings)  # computes its own fp32 baseline
    got = circulate_value_space(q, k, v, None, settings).out
    assert got.dtype == torch.bfloat16
    delta = (want - base).norm()
    err = (got.double() - want).norm() / delta
    floor = (want.to(torch.bfloat16).double() - want).norm() / delta
    assert err < 1.1 * floor, f"Δ error {err:.4f}, bf16 rounding floor {floor:.4f}"


def test_bf16_unselected_rows_keep_the_hosts_baseline():
    q, k, v = (torch.cat([t, t]) for t in inputs(torch.bfloat16, length=40))
    host = F.scaled_dot_product_attention(q, k, v)
    settings = CirculationSettings(1.05, 3.0, kernel="two_call")
    active = torch.tensor([False, True])
    assert needs_baseline(q, k, v, settings, active)
    got = circulate_value_space(q, k, v, host, settings, active).out
    assert torch.equal(got[0], host[0]) and not torch.equal(got[1], host[1])


def test_fp16_keeps_the_hosts_call_and_a_few_percent():
    q, k, v = inputs(torch.float16)
    settings = CirculationSettings(0.97, 3.0, kernel="two_call")
    assert needs_baseline(q, k, v, settings)
    want, base = reference_change(q, k, v, 0.97, 3.0)
    got = circulate_value_space(q, k, v, F.scaled_dot_product_attention(q, k, v), settings).out
    err = (got.double() - want).norm() / (want - base).norm()
    assert err < 0.03, f"fp16 Δ error {err:.4f}"


@pytest.mark.parametrize("alpha, logit_std, v_scale", [
    (0.97, 2.5, 1.0), (1.05, 2.5, 1.0), (0.95, 6.0, 1.0),
    (1.1, 2.5, 3e4),  # |V| far above fp16's safe range: V is scaled by a power of two
    (1.05, 2.5, 1e-6),  # tiny V: scaled up, not lost to fp16 subnormals
])
def test_bf16_computed_in_fp16_stays_near_the_bf16_floor(alpha, logit_std, v_scale):
    """The accelerator path without Triton: bf16 values convert exactly into fp16 once scaled by
    powers of two, so the change keeps within 1.5x of the bf16 output-rounding floor."""
    from hopfield_circulation.hopfield.two_call import two_call

    q, k, v = inputs(torch.bfloat16, seed=7, logit_std=logit_std)
    v = (v.double() * v_scale).to(torch.bfloat16)
    want, base = reference_change(q, k, v, alpha, 3.0)
    got = two_call(q, k, v, None, alpha, 3.0, bf16_compute=torch.float16).to(torch.bfloat16)
    delta = (want - base).norm()
    err = (got.double() - want).norm() / delta
    floor = (want.to(torch.bfloat16).double() - want).norm() / delta
    assert err < 1.5 * floor, f"Δ error {err:.4f}, bf16 rounding floor {floor:.4f}"


def test_bf16_in_fp16_keeps_logits_when_q_and_k_differ_in_scale():
    """q large and k small (or the reverse): the shared power of two keeps every logit."""
    from hopfield_circulation.hopfield.two_call import two_call

    q, k, v = inputs(torch.bfloat16, seed=11)
    q, k = (q.double() * 2.0**12).to(torch.bfloat16), (k.double() * 2.0**-12).to(torch.bfloat16)
    want, base = reference_change(q, k, v, 1.05, 3.0)
    got = two_call(q, k, v, None, 1.05, 3.0, bf16_compute=torch.float16).to(torch.bfloat16)
    floor = (want.to(torch.bfloat16).double() - want).norm()
    assert (got.double() - want).norm() < 1.5 * floor


@pytest.mark.parametrize("device", ["cpu", ON_CUDA])
@pytest.mark.parametrize("norm_match", [True, False])
@pytest.mark.parametrize("v_scale", [1e-8, 1.0, 6e4])  # 1e-8: norms under the norm floor
def test_bf16_in_fp16_unscales_once_bit_for_bit(norm_match, v_scale, device):
    """The fp16 retrievals stay scaled by V's power of two through the blend, which is undone
    once at its end (the norm floor scaled alike): bit for bit what unscaling both retrievals
    first gives, with one full pass fewer each."""
    from hopfield_circulation.hopfield.blend import blend_retrievals
    from hopfield_circulation.hopfield.skew import skew_scaled_attention
    from hopfield_circulation.hopfield.two_call import _fp16_exponents, two_call

    q, k, v = (t.to(device) for t in inputs(torch.bfloat16, seed=13))
    v = (v.double() * v_scale).to(torch.bfloat16)
    v[:, 1] = 0  # a head whose retrievals are zero
    beta = torch.tensor([3.0], device=device).reshape(1, 1, 1, 1)
    powers = torch.exp2(_fp16_exponents(q, k, v))
    q16, k16, v16 = ((t * powers[i].to(t.dtype)).to(torch.float16)
                     for i, t in enumerate((q, k, v)))
    base = F.scaled_dot_product_attention(q16, k16, v16).float().mul_(powers[3])
    perturbed = skew_scaled_attention(q16, k16, v16, 1.05).float().mul_(powers[3])
    want = blend_retrievals(base, perturbed, beta, norm_match=norm_match)
    got = two_call(q, k, v, None, 1.05, beta, norm_match, bf16_compute=torch.float16)
    assert torch.equal(got, want)


@pytest.mark.parametrize("device", ["cpu", ON_CUDA])
@pytest.mark.parametrize("alpha", [1.05, -0.7, "per sample"])
def test_bf16_in_fp16_from_one_buffer_matches_separate_copies(alpha, device, monkeypatch):
    """Eager calls write both retrievals' fp16 inputs into the slots of one buffer; a compile
    trace makes separate copies and concatenates them (skew_scaled_attention). The same bits,
    for a Python alpha whose c1 goes into the scale, one whose c1 does not (c1 < 1/4) and
    per-sample tensors."""
    from hopfield_circulation.hopfield.two_call import _retrievals_in_fp16

    q, k, v = (torch.cat([t, t * 0.5]).to(device) for t in inputs(torch.bfloat16, seed=17))
    if alpha == "per sample":
        alpha = torch.tensor([1.2, 0.8], device=device).reshape(2, 1, 1, 1)
    eager = _retrievals_in_fp16(q, k, v, alpha)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    traced = _retrievals_in_fp16(q, k, v, alpha)
    for got, want in zip(eager, traced, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("v_top", [14.0, 12.0])
def test_fp16_exponents_match_their_definition(v_top):
    """[a, b, c, -c] from one matrix-vector product equals its literal definition: e = the
    exponent of each max |x| (a power of two kept, all-zero -> -100), shift =
    ceil((e_q - e_k) / 2), a = -shift, b = shift, c = v_top - e_v."""
    import math

    from hopfield_circulation.hopfield.two_call import _fp16_exponents

    gen = torch.Generator().manual_seed(5)
    for trial in range(200):
        scales = [2.0 ** torch.randint(-60, 60, (), generator=gen).item()
                  * (torch.rand((), generator=gen).item() + 0.5) for _ in range(3)]
        q, k, v = ((torch.randn(2, 3, 16, 8, generator=gen) * s).to(torch.bfloat16)
                   for s in scales)
        if trial % 7 == 0:
            v = v * 0  # all zero
        if trial % 11 == 0:
            q = torch.full_like(q, 2.0**-20)  # an exact power of two
        e = [math.ceil(math.log2(max(float(t.abs().max()), 2.0**-100))) for t in (q, k, v)]
        shift = math.ceil((e[0] - e[1]) / 2)
        want = [-shift, shift, v_top - e[2], e[2] - v_top]
        assert _fp16_exponents(q, k, v, v_top).tolist() == want, (trial, e)


def test_v_top_keeps_the_fp16_blend_under_half_of_fp16s_range():
    """The largest power of two, at most 2^14, that V may top at so that the blend, at most
    (|1 - beta| + |beta|) times V's largest value, stays under 2^15."""
    from hopfield_circulation.hopfield.two_call import v_top_log2

    for beta in [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 7.5, 40.0, 1e4, -0.5, -2.0, -300.0]:
        growth, top = abs(1 - beta) + abs(beta), v_top_log2(beta)
        assert top == int(top) and top <= 14 and growth * 2.0**top <= 2.0**15, beta
        assert top == 14 or growth * 2.0 ** (top + 1) > 2.0**15, beta
    assert v_top_log2(torch.tensor(3.0)) == 14  # a tensor beta blends in fp32


@pytest.mark.parametrize("device", ["cpu", ON_CUDA])
@pytest.mark.parametrize("norm_match", [True, False])
@pytest.mark.parametrize("beta", [3.0, -2.0, 0.7])
def test_blend_in_fp16_is_the_fp32_blend_rounded_once(beta, norm_match, device):
    """in_fp16 stores the blend in fp16 (computed in fp32) and reads both retrievals into fp32
    norms: each output value is the fp32 blend's within fp16's rounding of the blend (and of
    its norm), whatever the unscale."""
    from hopfield_circulation.hopfield.blend import blend_retrievals

    gen = torch.Generator().manual_seed(19)
    base = torch.randn(2, 3, 40, 64, generator=gen)
    perturbed = base + 0.05 * torch.randn(2, 3, 40, 64, generator=gen)
    base[0, 0, 0] = perturbed[0, 0, 0] = 0  # a zero token stays zero
    base, perturbed = base.half().to(device), perturbed.half().to(device)
    for unscale in (None, torch.tensor(2.0**-7, device=device)):
        want = blend_retrievals(base, perturbed, beta, norm_match=norm_match, unscale=unscale)
        got = blend_retrievals(base, perturbed, beta, norm_match=norm_match, unscale=unscale,
                               in_fp16=True)
        assert got.dtype == torch.float32
        assert ((got - want).abs() <= 2.0**-10 * want.abs()).all(), (beta, unscale)
    with pytest.raises(ValueError, match="in_fp16"):
        blend_retrievals(base, perturbed, torch.tensor(3.0), in_fp16=True)


@pytest.mark.parametrize("device", ["cpu", ON_CUDA])
@pytest.mark.parametrize("beta", [3.0, 40.0, -5.0])
@pytest.mark.parametrize("v_scale", [1.0, 1e30])
def test_bf16_in_fp16_blend_stays_in_fp16s_range(beta, v_scale, device):
    """A number beta blends in fp16, V scaled down as far as beta needs (v_top_log2): finite
    and, to a bf16 rounding, what the fp32 blend (a tensor beta) gives, with V at bf16's
    large values and beta far out."""
    from hopfield_circulation.hopfield.two_call import two_call

    q, k, v = (t.to(device) for t in inputs(torch.bfloat16, seed=23))
    v = (v.double() * v_scale).to(device, torch.bfloat16)
    tensor_beta = torch.tensor([beta], device=device).reshape(1, 1, 1, 1)
    want = two_call(q, k, v, None, 1.05, tensor_beta, bf16_compute=torch.float16,
                    out_dtype=torch.bfloat16)
    got = two_call(q, k, v, None, 1.05, beta, bf16_compute=torch.float16,
                   out_dtype=torch.bfloat16)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=2.0**-6, atol=0)
