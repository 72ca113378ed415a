"""Stability measures against literal float64 L x L formulas and the paper's C x C form."""

from __future__ import annotations

import math

import pytest
import torch
from hopfield_circulation.hopfield import reference
from hopfield_circulation.hopfield.heatmap import diverging_colors, tokens_to_grid
from hopfield_circulation.hopfield.input_space import channel_subset, input_retrieval
from hopfield_circulation.hopfield.stability import (
    layer_stability,
    local_field,
    normalised_features,
)

F64 = torch.float64


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def literal(q, k, retrieval):
    """Explicit M_sym of centred logits, column by column, exactly as eq. 25-29 read."""
    d = q.shape[-1]
    qc, kc = q - q.mean(-2, keepdim=True), k - k.mean(-2, keepdim=True)
    m = qc @ kc.transpose(-1, -2) / math.sqrt(d)
    m_sym = (m + m.transpose(-1, -2)) / 2
    xi = retrieval - retrieval.mean(-2, keepdim=True)
    xi = xi / xi.norm(dim=-2, keepdim=True)
    b, h, _, cols = retrieval.shape
    energy = torch.zeros(b, h, cols, dtype=F64)
    frac, align = torch.zeros_like(energy), torch.zeros_like(energy)
    lam_all = torch.zeros(b, h, q.shape[-2], cols, dtype=F64)
    for bi in range(b):
        for hi in range(h):
            for c in range(cols):
                x = xi[bi, hi, :, c]
                field = m_sym[bi, hi] @ x
                lam = x * field
                lam_all[bi, hi, :, c] = lam
                energy[bi, hi, c] = -0.5 * lam.sum()
                frac[bi, hi, c] = (lam < 0).double().mean()
                align[bi, hi, c] = torch.dot(x, field) / (x.norm() * field.norm())
    return energy.mean((1, 2)), frac.mean((1, 2)), align.mean((1, 2)), lam_all.mean((1, 3))


def host_layout(t):
    """[B, H, L, d] as the view the attention override gets from [B, L, H*d] (strided)."""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d).unflatten(-1, (h, d)).transpose(1, 2)


@pytest.mark.parametrize("shape", [(2, 3, 40, 8, 5), (1, 2, 33, 4, 12), (3, 1, 17, 6, 6)])
def test_measures_equal_the_literal_lxl_formulas(shape):
    b, h, n, d, m = shape
    # Offsets make the token means matter (centring), as real activations do.
    q, k = rand(b, h, n, d, seed=1) + 0.7, rand(b, h, n, d, seed=2) - 0.4
    retrieval = rand(b, h, n, m, seed=3) + 1.5
    got = layer_stability(host_layout(q), host_layout(k), retrieval)
    e, r, a, lam = literal(q, k, retrieval)
    torch.testing.assert_close(got.energy, e)
    torch.testing.assert_close(got.instability, r)
    torch.testing.assert_close(got.align, a)
    torch.testing.assert_close(got.token_map, lam)
    torch.testing.assert_close(got.eta, reference.symmetry_index(q, k).mean(-1))


def test_float32_inputs_agree_with_float64():
    q, k = rand(2, 4, 256, 16, seed=40) + 3.0, rand(2, 4, 256, 16, seed=41) - 2.0
    retrieval = rand(2, 4, 256, 16, seed=42) * 0.1 + 5.0  # large mean, small spread
    exact = layer_stability(q, k, retrieval)
    fast = layer_stability(q.float(), k.float(), retrieval.half())
    for name in ("energy", "instability", "align", "eta"):
        torch.testing.assert_close(getattr(fast, name).double(), getattr(exact, name),
                                   rtol=2e-3, atol=2e-3)


def test_energy_is_minus_half_the_sum_of_lambda():
    q, k = rand(1, 2, 33, 8, seed=4), rand(1, 2, 33, 8, seed=5)
    retrieval = rand(1, 2, 33, 6, seed=6)
    got = layer_stability(q, k, retrieval)
    # the map is lambda's mean over heads and features, E their mean of -1/2 sum over tokens
    torch.testing.assert_close(got.energy, -0.5 * got.token_map.sum(-1))


def test_zero_columns_give_zero_not_nan():
    q, k = rand(1, 2, 20, 4, seed=7), rand(1, 2, 20, 4, seed=8)
    retrieval = rand(1, 2, 20, 3, seed=9)
    retrieval[..., 1] = 2.0  # a constant column is zero once centred
    got = layer_stability(q, k, retrieval)
    assert all(torch.isfinite(getattr(got, n)).all()
               for n in ("energy", "instability", "align", "eta", "token_map"))


def _paper_setup(seed, bias):
    """Block input X and per-head projections with (optionally) biases, as in Algorithm 2."""
    heads, d, channels, tokens = 2, 8, 12, 30
    x = rand(2, tokens, channels, seed=seed) + 0.5
    w_q, w_k = rand(heads * d, channels, seed=seed + 1), rand(heads * d, channels, seed=seed + 2)
    b_q = rand(heads * d, seed=seed + 3) if bias else torch.zeros(heads * d, dtype=F64)
    b_k = rand(heads * d, seed=seed + 4) if bias else torch.zeros(heads * d, dtype=F64)

    def project(w, b):
        return (x @ w.T + b).reshape(2, tokens, heads, d).transpose(1, 2)

    return x, w_q, w_k, project(w_q, b_q), project(w_k, b_k), heads, d


def test_field_equals_the_papers_channel_form_up_to_sqrt_d():
    """With q = X Wq^T, k = X Wk^T (any bias): h = Xc S Xc^T xi / sqrt(d), S = sym(Wq_h^T Wk_h)."""
    x, w_q, w_k, q, k, heads, d = _paper_setup(7, bias=True)
    channels = x.shape[-1]
    xi = normalised_features(rand(2, heads, x.shape[1], 4, seed=12))  # centred, as the probe
    xc = x - x.mean(-2, keepdim=True)
    w = w_q.reshape(heads, d, channels).transpose(-1, -2) @ w_k.reshape(heads, d, channels)
    s = (w + w.transpose(-1, -2)) / 2  # [H, C, C]
    paper = xc.unsqueeze(1) @ (s @ (xc.transpose(-1, -2).unsqueeze(1) @ xi))
    torch.testing.assert_close(local_field(q, k, xi) * math.sqrt(d), paper)


@pytest.mark.parametrize("bias", [False, True])
def test_measures_equal_the_papers_channel_form(bias):
    """The input basis end to end against the paper's C x C form: Algorithm 2's retrieval
    Hx = softmax(X (S + N) X^T / sqrt(d)) X, xi its centred unit columns, h = Xc S Xc^T xi
    (no sqrt(d)): E and lambda are sqrt(d) times ours, r and Align equal; eta equals the
    weight form when q, k have no bias (the weight form ignores biases)."""
    x, w_q, w_k, q, k, heads, d = _paper_setup(50, bias)
    channels = x.shape[-1]
    wq_h, wk_h = w_q.reshape(heads, d, channels), w_k.reshape(heads, d, channels)
    a_h = torch.einsum("hdi,hdj->hij", wq_h, wk_h)
    s = 0.5 * (a_h + a_h.transpose(-1, -2))
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    hx = probs @ x.unsqueeze(1)  # [B, H, L, C]
    xi = normalised_features(hx)
    xc = (x - x.mean(-2, keepdim=True)).unsqueeze(1)
    h = xc @ (s @ (xc.transpose(-1, -2) @ xi))  # paper's X S X^T xi on centred X
    lam = xi * h
    paper_e = (-0.5 * lam.sum(-2)).mean((1, 2))
    paper_r = (lam < 0).double().mean(-2).mean((1, 2))
    paper_align = ((xi * h).sum(-2) / h.norm(dim=-2)).mean((1, 2))

    got = layer_stability(q, k, input_retrieval(q, k, x))
    torch.testing.assert_close(got.energy * math.sqrt(d), paper_e)
    torch.testing.assert_close(got.instability, paper_r)
    torch.testing.assert_close(got.align, paper_align)
    torch.testing.assert_close(got.token_map * math.sqrt(d), lam.mean((1, 3)))
    if not bias:
        eta = reference.symmetry_index_weight_form(x, w_q, w_k, heads).mean(-1)
        torch.testing.assert_close(got.eta, eta)


def test_input_retrieval_is_the_literal_one_and_the_subset_of_all_channels_is_exact():
    x, _, _, q, k, heads, d = _paper_setup(60, bias=True)
    channels = x.shape[-1]
    literal_hx = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1) @ x.unsqueeze(1)
    torch.testing.assert_close(input_retrieval(q, k, x), literal_hx)
    assert channel_subset(channels, 0) is None and channel_subset(channels, channels) is None
    everything = torch.arange(channels)  # an explicit subset of all C channels
    exact = layer_stability(q, k, input_retrieval(q, k, x))
    via_subset = layer_stability(q, k, input_retrieval(q, k, x, everything))
    for name in ("energy", "instability", "align", "eta", "token_map"):
        torch.testing.assert_close(getattr(via_subset, name), getattr(exact, name))
    subset = channel_subset(640, 64)
    assert len(subset) == 64 and torch.equal(subset, subset.sort().values)
    assert torch.equal(subset, channel_subset(640, 64))  # fixed seed
    part = input_retrieval(q, k, x, channel_subset(channels, 5))
    torch.testing.assert_close(part, literal_hx[..., channel_subset(channels, 5)])


def _planted(seed, tokens, region):
    """Low-rank global associations (q = k, so M_sym is PSD): a retrieval aligned with them
    is reinforced everywhere; negating it on ``region`` plants a conflict there."""
    u = rand(1, 1, tokens, 3, seed=seed)
    q = k = u @ rand(3, 8, seed=seed + 1)
    xi = q[..., :1].clone()
    xi = xi - xi.mean(-2, keepdim=True)
    xi[..., region, :] *= -1
    return q, k, xi


def test_planted_conflict_shows_in_the_sdxl_map():
    grid = (8, 8)
    region = [r * 8 + c for r in range(2, 4) for c in range(5, 7)]
    q, k, xi = _planted(20, 64, region)
    token_map = layer_stability(q, k, xi).token_map
    heat = tokens_to_grid(token_map, grid, (16, 16))  # coarser layer grid, upsampled
    inside = heat[0, 4:8, 10:14].mean()
    mask = torch.ones(16, 16, dtype=torch.bool)
    mask[4:8, 10:14] = False
    assert inside < 0 < heat[0][mask].mean()
    assert (token_map[0, region] < 0).double().mean() >= 0.75
    colours = diverging_colors(heat)
    assert colours[0, 5, 11, 0] > colours[0, 5, 11, 2]  # red inside the planted region


def test_planted_conflict_shows_in_the_sd3_map():
    text, grid = 10, (6, 6)
    region = [text + r * 6 + c for r in range(0, 2) for c in range(0, 3)]
    q, k, xi = _planted(30, text + 36, region)
    token_map = layer_stability(q, k, xi).token_map
    heat = tokens_to_grid(token_map, grid, (12, 12), text_tokens=text)  # 2 x 2 patches
    assert heat[0, 0:4, 0:6].mean() < 0 < heat[0, 4:, :].mean()


def test_colour_map_is_diverging_and_finite():
    maps = torch.tensor([[[-1.0, 0.0, 1.0, float("nan")]]])
    colors = diverging_colors(maps, limit=torch.tensor([1.0]))
    red, white, blue, nan = colors[0, 0]
    assert red[0] > red[2] and blue[2] > blue[0] and white.min() > 0.9
    assert torch.equal(nan, white) and colors.min() >= 0 and colors.max() <= 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_on_tensor_cores_agree_with_float64(monkeypatch, dtype):
    """The CUDA path (Z kept in the model's dtype, products into fp32), emulated on the CPU:
    products of half-precision values are exact in fp32, so only Z's rounding shows."""
    from hopfield_circulation.hopfield import stability

    monkeypatch.setattr(stability, "half_into_fp32", lambda device: True)
    monkeypatch.setattr(stability, "fp32_product", lambda a, b: a @ b if a.dtype in (
        torch.float32, torch.float64) else a.float() @ b.float())
    q, k = rand(2, 4, 256, 16, seed=50) + 0.5, rand(2, 4, 256, 16, seed=51) - 0.3
    retrieval = rand(2, 4, 256, 16, seed=52) * 0.5 + 1.0
    q, k, retrieval = (t.to(dtype) for t in (q, k, retrieval))
    exact = layer_stability(q.double(), k.double(), retrieval.double())
    fast = layer_stability(q, k, retrieval)
    tol = 2e-3 if dtype == torch.float16 else 2e-2  # Z rounded to 11 or 8 mantissa bits
    for name in ("energy", "instability", "align", "eta"):
        torch.testing.assert_close(getattr(fast, name).double(), getattr(exact, name),
                                   rtol=tol, atol=tol)
