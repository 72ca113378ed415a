"""Hopfield stability measures of a retrieval, without L x L matrices (paper section 4).

For each retrieved feature xi (a column of the retrieval, centred over tokens, unit norm):

    h      = M_sym xi                     local field (eq. 25)
    lambda = xi * h                       per token (eq. 26); E = -1/2 sum(lambda) (eq. 27)
    r      = mean(lambda < 0)             instability fraction (eq. 28)
    Align  = cos(xi, h)                   alignment score (eq. 29)

and, of the same call, the symmetry index eta_M of the realised logits QK^T / sqrt(d) (eq. 36).

M_sym is the symmetric part of the logits of *centred* queries and keys, Qc Kc^T / sqrt(d):

    h = (Qc (Kc^T xi) + Kc (Qc^T xi)) / (2 sqrt(d))                       O(L d) per column

Scale: when q = X Wq^T and k = X Wk^T (with or without biases), Qc Kc^T = Xc W Xc^T, so h is
the paper's Xc S Xc^T xi (S = sym(Wq_h^T Wk_h), Algorithm 2) divided by sqrt(d): E and lambda
are the paper's values divided by sqrt(d) (its footnote 1 drops the scale, see
../shared/notes/perf-math.md 1(c)); r and Align are scale-free and identical. Centring matters
for r and Align: it removes the constant shift that biases and mean features add to every logit
(E does not change, since xi sums to zero). With qk-norm or RoPE (q, k not linear in X) the
head-space form is the natural generalisation rather than an equal quantity.

Two feature bases: the attention output's d channels per head ("value", any model, cheap), or
the retrieval over the block input X ("input", the paper's, C channels per head, optionally a
fixed subset of m channels); this module takes either as ``retrieval`` [B, H, L, m].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import stability_triton  # imports Triton only when its kernel first runs
from .symmetry import eta_from_grams, fp32_product, half_into_fp32

EPS = 1e-12


@dataclass
class LayerStability:
    """Per-sample measures of one attention call, averaged over features and heads: E_X, r_X,
    Align_X and eta_M (mean over heads), and the lambda map, packed in one [B, 4 + L] tensor.

    One tensor, because that is how the kernel makes them and how the probe keeps them (one
    tensor per call, summed per layer when the run ends); the rest are views of it by name."""

    packed: torch.Tensor  # [B, 4 + L]: E, r, Align, eta, then lambda per token

    def values(self) -> torch.Tensor:
        """[4, B]: E, r, Align, eta."""
        return self.packed[:, :4].T

    @property
    def token_map(self) -> torch.Tensor:  # [B, L] lambda per token, mean over features, heads
        return self.packed[:, 4:]

    @property
    def energy(self) -> torch.Tensor:  # [B]  E_X
        return self.packed[:, 0]

    @property
    def instability(self) -> torch.Tensor:  # [B]  r_X
        return self.packed[:, 1]

    @property
    def align(self) -> torch.Tensor:  # [B]  Align_X
        return self.packed[:, 2]

    @property
    def eta(self) -> torch.Tensor:  # [B]  eta_M, mean over heads
        return self.packed[:, 3]


def local_field(q: torch.Tensor, k: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """h = M_sym(centred) xi for q, k [B, H, L, d] and centred features xi [B, H, L, m].

    The readable per-column form (``layer_stability`` computes the same inside one fused pass).
    Since xi sums to zero over tokens, Kc^T xi = K^T xi and Qc^T xi = Q^T xi, and centring Q and
    K on the left only subtracts each column's mean: so the field of the raw q, k, centred over
    tokens, is the centred field, without copying q and k.
    """
    field = q @ (k.transpose(-1, -2) @ xi) + k @ (q.transpose(-1, -2) @ xi)
    field = field - field.mean(dim=-2, keepdim=True)
    return field / (2 * math.sqrt(q.shape[-1]))


def normalised_features(retrieval: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Columns centred over tokens (axis -2) and scaled to unit norm; zero columns stay zero."""
    centred = retrieval - retrieval.mean(dim=-2, keepdim=True)
    return centred / centred.norm(dim=-2, keepdim=True).clamp_min(eps)


def layer_stability(q: torch.Tensor, k: torch.Tensor, retrieval: torch.Tensor,
                    plan_key: tuple | None = None) -> LayerStability:
    """E, r, Align, eta and the lambda map of one call. q, k [B, H, L, d]; retrieval [B, H, L, m]
    (any basis, any strides). Runs in fp32 (fp64 for fp64 input) whatever the model dtype.

    Cost (the probe runs this inside attention): 14 L d^2 multiply-adds per (sample, head) at
    m = d, i.e. 3.5 d / L of one attention call's matmuls, plus ~10 passes over an [L, m] tensor.
    How: K, Q and the centred retrieval Xc share one buffer Z = [K | Q | Xc], so two batched
    matmuls give every Gram needed (K^T [K Q Xc] and Q^T [Q Xc]: eta's Q^T Q, K^T K, K^T Q and
    the field's K^T Xc, Q^T Xc), a third applies the field. Normalising xi is folded into the
    small [2d, m] factor (h / |xc| instead of xc / |xc|), Sum(lambda) comes from the Grams, and
    the centring of h is a rank-1 shift added inside the field's matmul. No host sync.

    Half-precision inputs on a device that multiplies them into fp32 (CUDA) keep Z in the
    model's dtype, so the three products run on tensor cores with fp32 accumulation; everything
    after the products is fp32 as elsewhere. Where it applies (CUDA, fp16/bf16, d = m = 64 or 128)
    four Triton launches compute all of it, the tokens split among the GPU's processors
    (hopfield/stability_triton.py; d = m = 128: eta's one or two more). ``plan_key``: the
    caller's key for this call's layout, under which those launches are planned too
    (``stability_triton.run_planned`` then launches them on the caller's unviewed tensors).
    """
    if stability_triton.eligible(q, k, retrieval):  # CUDA, fp16/bf16, widths 64 or 128
        if torch.compiler.is_compiling():  # one opaque op in the graph, never re-traced
            return LayerStability(stability_triton.STABILITY_OP(q, k, retrieval))
        packed = stability_triton.try_stability(q, k, retrieval, plan_key)
        if packed is not None:
            return LayerStability(packed)
    return layer_stability_torch(q, k, retrieval)


def layer_stability_torch(q: torch.Tensor, k: torch.Tensor,
                          retrieval: torch.Tensor) -> LayerStability:
    """``layer_stability`` by torch ops alone (any device; what a compile trace runs)."""
    dtype = torch.promote_types(retrieval.dtype, torch.float32)
    b, heads, tokens, d = q.shape
    m = retrieval.shape[-1]
    low = q.dtype if q.dtype == k.dtype == retrieval.dtype != dtype and half_into_fp32(
        q.device) else dtype  # Z's dtype
    z = torch.empty(b, heads, tokens, 2 * d + m, dtype=low, device=q.device)
    z[..., :d].copy_(k)  # copy_ casts and gathers the host's strided layout in one pass
    z[..., d:2 * d].copy_(q)
    centred = z[..., 2 * d:]
    centred.copy_(retrieval)
    centred.sub_(retrieval.mean(dim=-2, keepdim=True, dtype=dtype).to(low))

    z3 = z.view(b * heads, tokens, -1)
    k3, q3, kq3, x3 = z3[..., :d], z3[..., d:2 * d], z3[..., :2 * d], z3[..., 2 * d:]
    gram_k = fp32_product(k3.transpose(-1, -2), z3)  # [BH, d, 2d + m]: K^T K|K^T Q|K^T Xc
    gram_q = fp32_product(q3.transpose(-1, -2), z3[..., d:])  # [BH, d, d + m]: Q^T Q|Q^T Xc

    # eta = <M, M^T> / |M|^2 from the same Grams, as hopfield.symmetry
    eta = eta_from_grams(gram_q[..., :d], gram_k[..., :d], gram_k[..., d:2 * d])

    # h / |xc| = [K | Q] [Q^T Xc ; K^T Xc] / (2 sqrt(d) |xc|^2), centred over tokens
    col_sq = column_squares(x3, dtype)  # [BH, 1, m]: |xc|^2
    k_x, q_x = gram_k[..., 2 * d:], gram_q[..., d:]
    scale = col_sq.clamp_min(EPS).mul_(2 * math.sqrt(d))
    weights = torch.cat((q_x, k_x), dim=-2).div_(scale)  # [BH, 2d, m]
    shift = kq3.mean(dim=-2, keepdim=True, dtype=dtype) @ weights  # [BH, 1, m]: h's token mean
    if low == dtype:
        field = torch.baddbmm(shift, kq3, weights, beta=-1)  # h / |xc|, [BH, L, m]
    else:
        field = fp32_product(kq3, weights.to(low)).sub_(shift)
    field_sq = torch.square(field).sum(dim=-2)  # |h|^2 / |xc|^2

    # E = -1/2 sum_l lambda = -1/2 xi^T h = -1/2 Xc^T [K | Q] weights (the shift drops out: xc
    # sums to zero), whose two halves K^T Xc . Q^T Xc / scale are equal: -(K^T Xc . weights_Q)
    energy = (k_x * weights[..., :d, :]).sum(dim=-2).neg_()  # [BH, m]
    lam = field.mul_(x3)  # lambda = xi * h = xc * (h / |xc|), in place
    negative = lam.clamp(max=0).sign_().sum(dim=-2).div_(-tokens)  # share of lambda < 0
    # Align = xi^T h / (|xi| |h|) = -2 E / (|xc| |h / |xc||)
    align = energy.div((col_sq.squeeze(-2) * field_sq).sqrt_().clamp_min_(EPS)).mul_(-2)

    # each measure's mean over heads and features per sample, then eta's and the lambda map
    measures = torch.stack((energy, negative, align)).view(3, b, heads * m).mean(dim=-1)
    token_map = lam.view(b, heads, tokens, m).sum(dim=(1, 3)).div_(heads * m)  # [B, L]
    return LayerStability(torch.cat(
        (measures.T, eta.view(b, heads).mean(dim=-1, keepdim=True), token_map), dim=1))


def column_squares(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """|x|^2 over tokens (axis -2) in ``dtype``, [..., 1, m]. The CPU's vector_norm over an
    axis other than the last runs unvectorised (5 to 14 times the time of squaring and summing);
    elsewhere, and for half-precision x (whose squares could overflow before the fp32 sum),
    vector_norm reads x into ``dtype`` in one pass."""
    if x.dtype == dtype and x.device.type == "cpu":
        return torch.square(x).sum(dim=-2, keepdim=True)
    return torch.square(torch.linalg.vector_norm(x, dim=-2, keepdim=True, dtype=dtype))
