"""Stability measures against literal float64 L x L formulas and the paper's C x C form."""

from __future__ import annotations

import math

import torch
from hopfield_circulation.hopfield.heatmap import diverging_colors, tokens_to_grid
from hopfield_circulation.hopfield.stability import (
    channel_subset,
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


def test_measures_equal_the_literal_lxl_formulas():
    q, k = rand(2, 3, 40, 8, seed=1), rand(2, 3, 40, 8, seed=2)
    retrieval = rand(2, 3, 40, 5, seed=3)
    got = layer_stability(q, k, retrieval)
    e, r, a, lam = literal(q, k, retrieval)
    torch.testing.assert_close(got.energy, e)
    torch.testing.assert_close(got.instability, r)
    torch.testing.assert_close(got.align, a)
    torch.testing.assert_close(got.token_map, lam)


def test_energy_is_minus_half_the_sum_of_lambda():
    q, k = rand(1, 2, 33, 8, seed=4), rand(1, 2, 33, 8, seed=5)
    retrieval = rand(1, 2, 33, 6, seed=6)
    got = layer_stability(q, k, retrieval)
    torch.testing.assert_close(got.energy, -0.5 * got.token_map.sum(-1))


def test_field_equals_the_papers_channel_form_up_to_sqrt_d():
    """With q = X Wq^T, k = X Wk^T (any bias): h = Xc S Xc^T xi / sqrt(d), S = sym(Wq_h^T Wk_h)."""
    heads, d, channels, tokens = 2, 8, 12, 30
    x = rand(1, tokens, channels, seed=7)
    w_q, w_k = rand(heads * d, channels, seed=8), rand(heads * d, channels, seed=9)
    b_q, b_k = rand(heads * d, seed=10), rand(heads * d, seed=11)
    q = (x @ w_q.T + b_q).reshape(1, tokens, heads, d).transpose(1, 2)
    k = (x @ w_k.T + b_k).reshape(1, tokens, heads, d).transpose(1, 2)
    xi = normalised_features(rand(1, heads, tokens, 4, seed=12))  # centred, as the probe uses
    xc = x - x.mean(-2, keepdim=True)
    w = w_q.reshape(heads, d, channels).transpose(-1, -2) @ w_k.reshape(heads, d, channels)
    s = (w + w.transpose(-1, -2)) / 2  # [H, C, C]
    paper = xc.unsqueeze(1) @ (s @ (xc.transpose(-1, -2).unsqueeze(1) @ xi))
    torch.testing.assert_close(local_field(q, k, xi) * math.sqrt(d), paper)


def test_input_basis_subset():
    assert channel_subset(640, 0) is None and channel_subset(640, 640) is None
    subset = channel_subset(640, 64)
    assert len(subset) == 64 and torch.equal(subset, subset.sort().values)
    assert torch.equal(subset, channel_subset(640, 64))  # fixed seed
    q, k, x = rand(1, 2, 20, 8, seed=13), rand(1, 2, 20, 8, seed=14), rand(1, 2, 20, 16, seed=15)
    full = layer_stability(q, k, x)  # all channels = the exact input basis
    assert torch.equal(full.align, layer_stability(q, k, x[..., torch.arange(16)]).align)


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
