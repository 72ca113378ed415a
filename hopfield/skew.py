"""Circulation-scaled retrieval: attention with logits M_sym + alpha * M_skew.

With M = Q K^T / sqrt(d), c1 = (1 + alpha) / 2 and c2 = (1 - alpha) / 2,

    M_sym + alpha * M_skew = (c1 * Q K^T + c2 * K Q^T) / sqrt(d).

That is one standard attention over features of width 2d (the "concat trick"):

    q~ = [c1 * q, c2 * k]        k~ = [k, q]

so q~ k~^T = c1 Q K^T + c2 K Q^T, scaled by 1/sqrt(d) (not 1/sqrt(2d)); signed coefficients
make alpha < -1 or alpha > 1 (c1 or c2 negative) need no special case. The values are
zero-padded to width 2d so that q, k and v share one head dimension: PyTorch's flash kernels
(CPU and CUDA) only accept that, and without them the call falls back to a path that
materialises the L x L matrix. No L x L tensor is built here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Scalar = float | torch.Tensor


def as_device_tensor(value: Scalar, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A Python number or tensor as a tensor of ``dtype`` on ``device``, without rounding a
    Python float through fp32 first (that would cost fp64 references their last digits)."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype)
    # torch.full, not torch.tensor: no host-to-device copy (which would wait for the GPU)
    return torch.full((), value, dtype=dtype, device=device)


def skew_coefficients(alpha: Scalar, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """c1 = (1 + alpha) / 2 and c2 = (1 - alpha) / 2 as tensors on ``like``'s device
    (fp32, or fp64 for fp64 input).

    ``alpha`` may be a Python number or a tensor that broadcasts against [B, H, L, d]
    (per-sample alpha is [B, 1, 1, 1]); it never leaves the device.
    """
    dtype = torch.promote_types(like.dtype, torch.float32)  # fp64 inputs keep fp64
    a = as_device_tensor(alpha, dtype, like.device)
    return (1 + a) / 2, (1 - a) / 2


def concat_features(
    q: torch.Tensor, k: torch.Tensor, alpha: Scalar
) -> tuple[torch.Tensor, torch.Tensor]:
    """The width-2d query and key whose plain dot product is c1 Q K^T + c2 K Q^T.

    Eager: written straight into preallocated halves, no temporaries beyond the two outputs.
    Under torch.compile: plain concatenations (dynamo cannot trace ``out=`` into a strided view,
    and inductor fuses the products into the concatenation anyway).
    """
    c1, c2 = skew_coefficients(alpha, q)
    if torch.compiler.is_compiling():
        c1, c2 = c1.to(q.dtype), c2.to(q.dtype)
        return torch.cat((q * c1, k * c2), dim=-1), torch.cat((k, q), dim=-1)
    d = q.shape[-1]
    q_cat = q.new_empty(*q.shape[:-1], 2 * d)
    k_cat = k.new_empty(*k.shape[:-1], 2 * d)
    # fp32 coefficients, cast so the attention runs in the model's dtype.
    torch.mul(q, c1.to(q.dtype), out=q_cat[..., :d])
    torch.mul(k, c2.to(q.dtype), out=q_cat[..., d:])
    k_cat[..., :d] = k
    k_cat[..., d:] = q
    return q_cat, k_cat


def skew_scaled_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, alpha: Scalar,
    scale: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax((M_sym + alpha M_skew)) V for q, k, v of shape [B, H, L, d]; returns [B, H, L, d_v].

    Needs a square logit matrix (same L for q and k): the decomposition is only defined there.
    ``scale`` replaces the logits' 1/sqrt(d) (for q and k that were rescaled beforehand).
    """
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"skew scaling needs self-attention (query and key lengths equal), got {q.shape[-2]} "
            f"and {k.shape[-2]}"
        )
    d = q.shape[-1]
    q_cat, k_cat = concat_features(q, k, alpha)
    width = q_cat.shape[-1]
    dv = v.shape[-1]
    if dv < width:
        v_pad = v.new_zeros(*v.shape[:-1], width)
        v_pad[..., :dv] = v
    else:
        v_pad = v
    out = F.scaled_dot_product_attention(q_cat, k_cat, v_pad,
                                         scale=d**-0.5 if scale is None else scale)
    return out[..., :dv] if dv < width else out
