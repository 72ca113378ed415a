"""The circulation core against literal float64 references (explicit L x L), fresh random inputs."""

from __future__ import annotations

import pytest
import torch
from core.devices import ON_CUDA
from core.tensors_made import TensorsMade
from hopfield_circulation.hopfield import (
    CirculationSettings,
    adaptive_coefficients,
    aggregate_eta,
    blend_retrievals,
    circulate_input_space,
    circulate_rows,
    circulate_value_space,
    concat_features,
    skew_scaled_attention,
    symmetry_index,
)
from hopfield_circulation.hopfield import reference as ref
from hopfield_circulation.hopfield.skew import attend_any_width

F64 = torch.float64
ALPHAS = [1.05, 1.2, 2.0, 0.97, 0.9, 0.5, 0.0, 1.0, -0.5, -2.0]  # -0.5, -2: c1 < 0 or c2 > 1
SHAPES = [(2, 2, 37, 16), (1, 3, 64, 32), (2, 2, 218, 64)]  # odd L, SD3-like 154 + 64


def rand(*shape, seed, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def qkv(shape, seed):
    return rand(*shape, seed=seed), rand(*shape, seed=seed + 1), rand(*shape, seed=seed + 2)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("shape", SHAPES)
def test_concat_trick_equals_explicit_skew_attention(alpha, shape):
    q, k, v = qkv(shape, seed=hash((alpha, shape)) % 10_000)
    expected = ref.skew_scaled_attention(q, k, v, alpha)
    torch.testing.assert_close(skew_scaled_attention(q, k, v, alpha), expected, rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_concat_logits_are_the_scaled_decomposition(alpha):
    q, k, _ = qkv((2, 2, 29, 8), seed=3)
    q_cat, k_cat = concat_features(q, k, alpha)
    m_sym, m_skew = ref.decompose(ref.logits(q, k))
    torch.testing.assert_close(q_cat @ k_cat.transpose(-1, -2) / 8**0.5, m_sym + alpha * m_skew)


@pytest.mark.parametrize("alpha", [1.05, 0.5, -2.0])  # c1 folded into the scale, and not
def test_values_at_their_own_width_give_the_same_retrieval(monkeypatch, alpha):
    """Where the concat trick keeps v at its own width (skew.narrow_values: Hopper, d = 64),
    the retrieval is the literal one, as with the values widened to 2d."""
    from hopfield_circulation.hopfield import skew

    q, k, v = qkv((2, 3, 77, 64), seed=11)
    widened = skew_scaled_attention(q, k, v, alpha)
    monkeypatch.setattr(skew, "narrow_values", lambda device, d: True)
    narrow = skew_scaled_attention(q, k, v, alpha)
    torch.testing.assert_close(narrow, ref.skew_scaled_attention(q, k, v, alpha), rtol=1e-10,
                               atol=1e-12)
    torch.testing.assert_close(narrow, widened, rtol=1e-10, atol=1e-12)
    # asked for by name (the benchmark's rows), whatever the device says
    assert torch.equal(skew_scaled_attention(q, k, v, alpha, narrow=True), narrow)
    monkeypatch.undo()
    assert torch.equal(skew_scaled_attention(q, k, v, alpha, narrow=False), widened)


def test_per_sample_alpha_tensor():
    q, k, v = qkv((3, 2, 41, 16), seed=5)
    alphas = torch.tensor([1.05, 0.9, -1.0], dtype=F64)
    out = skew_scaled_attention(q, k, v, alphas.reshape(3, 1, 1, 1))
    for b, a in enumerate(alphas.tolist()):
        torch.testing.assert_close(out[b], ref.skew_scaled_attention(q[b], k[b], v[b], a))


def test_value_width_other_than_head_dim():
    q, k = rand(2, 2, 33, 16, seed=7), rand(2, 2, 33, 16, seed=8)
    for width in (8, 48):  # narrower (zero-padded) and wider (input-space X) than 2d
        v = rand(2, 2, 33, width, seed=9)
        torch.testing.assert_close(skew_scaled_attention(q, k, v, 1.3),
                                   ref.skew_scaled_attention(q, k, v, 1.3))


@pytest.mark.parametrize("width, values", [(16, 8), (16, 16), (16, 40), (64, 640), (64, 200),
                                           (128, 1280), (160, 300)])
def test_any_value_width_equals_the_literal_softmax_and_builds_no_l_by_l_matrix(width, values):
    """The input space's retrievals over X (C channels per head, wider than q) on the CPU: q and
    k zero-padded to skew.PADDED_WIDTH (or C, if narrower) where that is wider than q, v in
    chunks of that width, the last one zero-padded, never the L x L weights SDPA builds there
    for unequal widths; a narrower v zero-padded to q's width."""
    tokens = 37
    q, k = rand(2, 3, tokens, width, seed=70), rand(2, 3, tokens, width, seed=71)
    x = rand(2, tokens, values, seed=72)
    v = x.unsqueeze(1).expand(-1, 3, -1, -1)  # shared by the heads, as heads_view gives it
    with TensorsMade() as made:
        got = attend_any_width(q, k, v, scale=0.3)
    expected = torch.softmax(q @ k.transpose(-1, -2) * 0.3, -1) @ v
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert not made.square(tokens), made.square(tokens)
    # the default scale is q's own width, padded or not
    torch.testing.assert_close(attend_any_width(q, k, v), torch.softmax(
        q @ k.transpose(-1, -2) / width**0.5, -1) @ v, rtol=1e-10, atol=1e-12)


def test_alpha_one_is_plain_attention():
    q, k, v = qkv((2, 3, 50, 16), seed=11)
    plain = torch.softmax(ref.logits(q, k), -1) @ v
    torch.testing.assert_close(skew_scaled_attention(q, k, v, 1.0), plain)


def test_alpha_zero_logits_are_symmetric():
    q, k, _ = qkv((1, 2, 20, 8), seed=12)
    q_cat, k_cat = concat_features(q, k, 0.0)
    m = q_cat @ k_cat.transpose(-1, -2)
    torch.testing.assert_close(m, m.transpose(-1, -2))


def test_cross_attention_is_refused():
    q, k = rand(1, 1, 10, 8, seed=1), rand(1, 1, 12, 8, seed=2)
    with pytest.raises(ValueError, match="self-attention"):
        skew_scaled_attention(q, k, k, 1.1)


@pytest.mark.parametrize("alpha, beta", [(1.05, 3.0), (1.2, 5.0), (0.95, 3.0), (1.1, -2.0)])
def test_value_space_matches_reference(alpha, beta):
    q, k, v = qkv((2, 2, 45, 16), seed=13)
    base = torch.softmax(ref.logits(q, k), -1) @ v
    out = circulate_value_space(q, k, v, base, CirculationSettings(alpha, beta)).out
    expected = ref.blend(base, ref.skew_scaled_attention(q, k, v, alpha), beta)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


def _layer(seed, batch=2, tokens=40, channels=24, heads=3, d=8):
    x = rand(batch, tokens, channels, seed=seed)
    w_q, w_k, w_v = (rand(heads * d, channels, seed=seed + i) / channels**0.5 for i in (1, 2, 3))
    q, k, v = (torch.einsum("blc,hdc->bhld", x, w.reshape(heads, d, channels))
               for w in (w_q, w_k, w_v))
    return x, w_q, w_k, w_v, q, k, v


@pytest.mark.parametrize("alpha, beta", [(1.05, 3.0), (1.2, 5.0), (0.9, 3.0), (-0.5, 2.0)])
def test_input_space_equals_algorithm_2(alpha, beta):
    x, w_q, w_k, w_v, q, k, v = _layer(seed=17)
    base = torch.softmax(ref.logits(q, k), -1) @ v
    out = circulate_input_space(q, k, x, w_v, None, base, CirculationSettings(alpha, beta)).out
    expected = ref.algorithm2(x, w_q, w_k, w_v, heads=3, alpha=alpha, beta=beta)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


def test_value_space_equals_input_space_without_norm_matching():
    x, _, _, w_v, q, k, v = _layer(seed=19)
    base = torch.softmax(ref.logits(q, k), -1) @ v
    settings = CirculationSettings(1.15, 4.0, norm_match=False)
    value = circulate_value_space(q, k, v, base, settings).out
    inp = circulate_input_space(q, k, x, w_v, None, base, settings).out
    torch.testing.assert_close(value, inp, rtol=1e-10, atol=1e-12)


def test_input_space_value_bias_passes_through():
    x, _, _, w_v, q, k, v = _layer(seed=21)
    b_v = rand(24, seed=22)
    base = torch.softmax(ref.logits(q, k), -1) @ (v + b_v.reshape(1, 3, 1, 8))
    settings = CirculationSettings(1.1, 3.0, norm_match=False)
    with_bias = circulate_input_space(q, k, x, w_v, b_v, base, settings).out
    without = circulate_input_space(q, k, x, w_v, None, base, settings).out
    torch.testing.assert_close(with_bias - without, b_v.reshape(1, 3, 1, 8).expand_as(without))


@pytest.mark.parametrize("shape", [*SHAPES, (2, 2, 20, 16), (1, 3, 63, 32)])  # + L < 2d
def test_eta_from_gram_matrices_equals_explicit(shape):
    q, k, _ = qkv(shape, seed=23)
    torch.testing.assert_close(symmetry_index(q, k), ref.symmetry_index(q, k), rtol=1e-12,
                               atol=1e-12)


def test_eta_equals_the_papers_channel_form_without_bias():
    x, w_q, w_k, _, q, k, _ = _layer(seed=29)
    torch.testing.assert_close(symmetry_index(q, k),
                               ref.symmetry_index_weight_form(x, w_q, w_k, heads=3))


def test_eta_bounds_and_degenerate_input():
    q = rand(1, 2, 30, 8, seed=31)
    torch.testing.assert_close(symmetry_index(q, q), torch.ones(1, 2, dtype=F64))  # symmetric
    assert torch.equal(symmetry_index(torch.zeros(1, 1, 5, 4), torch.zeros(1, 1, 5, 4)),
                       torch.zeros(1, 1))


def test_adaptive_coefficients_follow_eq_37_to_42():
    eta = torch.tensor([[0.2, 0.6], [0.7, 0.9]], dtype=F64)
    per_sample, per_call = aggregate_eta(eta), aggregate_eta(eta, per_sample=False)
    torch.testing.assert_close(per_sample, torch.tensor([0.4, 0.8], dtype=F64))
    torch.testing.assert_close(per_call, torch.tensor([0.6], dtype=F64))
    alpha_eff, beta_eff = adaptive_coefficients(1.2, 5.0, per_sample)
    torch.testing.assert_close(alpha_eff, 1 + 0.2 * per_sample)
    torch.testing.assert_close(beta_eff, 5.0 * (1 - per_sample))


@pytest.mark.parametrize("per_sample", [True, False])
def test_adaptive_value_space_matches_reference(per_sample):
    q, k, v = qkv((2, 3, 31, 16), seed=37)
    base = torch.softmax(ref.logits(q, k), -1) @ v
    settings = CirculationSettings(1.2, 5.0, adaptive=True, eta_per_sample=per_sample)
    result = circulate_value_space(q, k, v, base, settings)
    eta = ref.symmetry_index(q, k)
    eta_bar = eta.mean(-1) if per_sample else eta.mean().expand(2)
    for b in range(2):
        a_eff, b_eff = 1 + 0.2 * eta_bar[b].item(), 5.0 * (1 - eta_bar[b].item())
        expected = ref.blend(base[b], ref.skew_scaled_attention(q[b], k[b], v[b], a_eff), b_eff)
        torch.testing.assert_close(result.out[b], expected, rtol=1e-10, atol=1e-12)
    assert result.eta_bar.shape == ((2,) if per_sample else (1,))


def test_identity_settings_return_the_baseline_object():
    q, k, v = qkv((1, 1, 9, 4), seed=41)
    base = torch.randn(1, 1, 9, 4, dtype=F64)
    for settings in (CirculationSettings(1.0, 3.0), CirculationSettings(1.3, 0.0),
                     CirculationSettings(1.0, 5.0, adaptive=True)):
        assert circulate_value_space(q, k, v, base, settings).out is base
        assert circulate_input_space(q, k, q[:, 0], torch.eye(4, dtype=F64), None, base,
                                     settings).out is base


def test_unselected_rows_keep_the_baseline_bitwise():
    q, k, v = qkv((4, 2, 23, 8), seed=43)
    base = torch.softmax(ref.logits(q, k), -1) @ v
    active = torch.tensor([False, True, False, True])
    out = circulate_value_space(q, k, v, base, CirculationSettings(1.1, 3.0), active).out
    assert torch.equal(out[~active], base[~active])
    assert not torch.equal(out[active], base[active])


def test_norm_match_is_nan_and_inf_safe():
    base = torch.zeros(1, 1, 4, 8)
    perturbed = torch.zeros(1, 1, 4, 8)
    perturbed[0, 0, 1] = float("inf")
    out = blend_retrievals(base, perturbed, 3.0)
    assert torch.isfinite(out).all()
    assert torch.equal(blend_retrievals(base, base, 3.0), base)  # zero vectors stay zero


@pytest.mark.parametrize("device", ["cpu", ON_CUDA])  # the CPU casts after, CUDA as it stores
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("norm_match", [True, False])
@pytest.mark.parametrize("unscale", [None, 2.0**-7])
def test_blend_into_the_model_dtype_rounds_the_fp32_result(out_dtype, norm_match, unscale,
                                                           device):
    """With out_dtype the last multiply rounds into the model's dtype: the same bits as the
    fp32 blend rounded afterwards, except that a value the rounding makes inf (beyond fp16's
    range) is zeroed like every other non-finite value."""
    base = rand(2, 3, 29, 16, seed=61, dtype=torch.float32).to(torch.float16)
    perturbed = (base.float() + 0.05 * rand(2, 3, 29, 16, seed=62, dtype=torch.float32)).half()
    base[0, 0, 0], perturbed[0, 0, 0] = 0.0, 0.0  # a row whose output leaves fp16's range:
    base[0, 0, 0, 0] = perturbed[0, 0, 0, 0] = perturbed[0, 0, 0, 1] = 6e4  # 8.05e4 at [1]
    base, perturbed = base.to(device), perturbed.to(device)
    beta = torch.tensor([3.0, 0.5], device=device).reshape(2, 1, 1, 1)
    scale = None if unscale is None else torch.tensor(unscale, device=device)
    want = blend_retrievals(base, perturbed, beta, norm_match=norm_match, unscale=scale)
    got = blend_retrievals(base, perturbed, beta, norm_match=norm_match, unscale=scale,
                           out_dtype=out_dtype)
    assert got.dtype == out_dtype
    rounded = want.to(out_dtype)
    if norm_match:
        rounded = torch.nan_to_num(rounded, nan=0.0, posinf=0.0, neginf=0.0)
    assert torch.equal(got, rounded)
    if norm_match and unscale is None and out_dtype == torch.float16:
        assert want[0, 0, 0, 1] > 65504 and got[0, 0, 0, 1] == 0  # zeroed, not inf


@pytest.mark.parametrize("device", ["cpu", ON_CUDA])
@pytest.mark.parametrize("power", [-7, 0, 9])
def test_the_norm_floor_from_the_scale_is_the_floor_from_its_inverse(power, device):
    """scaled_by (1 / unscale, the two-call path's power of two) makes the norm floor in one
    multiply: the same bits as NORM_EPS / unscale, a zero token and one at the floor
    included."""
    base = rand(2, 3, 29, 16, seed=63, dtype=torch.float32).half()
    perturbed = (base.float() + 0.05 * rand(2, 3, 29, 16, seed=64, dtype=torch.float32)).half()
    base[0, 0, 0] = perturbed[0, 0, 0] = 0.0
    base[0, 0, 1] = perturbed[0, 0, 1] = 2.0**-24  # norms at the floor's scale
    base, perturbed = base.to(device), perturbed.to(device)
    unscale = torch.tensor(2.0**power, device=device)
    for beta in (3.0, torch.tensor([3.0, 0.5], device=device).reshape(2, 1, 1, 1)):
        want = blend_retrievals(base, perturbed, beta, unscale=unscale)
        got = blend_retrievals(base, perturbed, beta, unscale=unscale,
                               scaled_by=torch.tensor(2.0**-power, device=device))
        assert torch.equal(got, want)


def test_norm_ratio_is_clamped():
    base = torch.ones(1, 1, 1, 4, dtype=F64)
    perturbed = 1.001 * base  # new = base + 3 * 0.001 * base: ratio ~1, no clamp
    torch.testing.assert_close(blend_retrievals(base, perturbed, 3.0), perturbed)
    tiny = blend_retrievals(base, -base, 0.5)  # new = 0 -> ratio hits the 4x ceiling, stays 0
    assert torch.equal(tiny, torch.zeros_like(tiny))


def test_low_precision_blend_runs_in_fp32():
    q, k, v = (t.to(torch.bfloat16) for t in qkv((1, 2, 16, 8), seed=47))
    base = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    out = circulate_value_space(q, k, v, base, CirculationSettings(1.05, 3.0)).out
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1.0"])
def test_settings_reject_non_finite_values(bad):
    with pytest.raises(ValueError, match="finite"):
        CirculationSettings(alpha=bad)
    with pytest.raises(ValueError, match="finite"):
        CirculationSettings(beta=bad)


@pytest.mark.parametrize("rows", [slice(0, 2), slice(2, 4), slice(1, 3)])
def test_one_run_of_rows_is_steered_alone(rows):
    """circulate_rows (one CFG branch on the two-call path) equals steering every row and
    keeping the baseline elsewhere, bit for bit outside the run, and keeps base's layout."""
    q, k, v = qkv((4, 2, 37, 16), seed=41)
    base = rand(4, 37, 2, 16, seed=44).transpose(1, 2)  # the host's [B, L, H, d] memory
    settings = CirculationSettings(1.1, 3.0)
    active = torch.zeros(4, dtype=torch.bool)
    active[rows] = True
    out = circulate_rows(q, k, v, base, settings, rows)
    expected = circulate_value_space(q, k, v, base, settings, active).out
    assert torch.equal(out[~active], base[~active])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert out.transpose(1, 2).is_contiguous()  # back to the host's layout without a copy
    with pytest.raises(ValueError, match="adaptive"):
        circulate_rows(q, k, v, base, CirculationSettings(1.1, 3.0, adaptive=True), rows)
