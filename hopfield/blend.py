"""Blending the perturbed retrieval into the baseline, then matching its norm (paper eq. 33-34, 42).

    new = base + beta * (perturbed - base)
    out = new * clamp(|perturbed| / |new|, r_min, r_max)      per token and head

The reference norm is the *perturbed* retrieval's, as in the authors' released code (the paper's
text says "baseline feature scale"; README says how much the two differ). All of it runs in fp32
whatever the model dtype, because the change is a small difference of two nearly equal
retrievals amplified by beta.
"""

from __future__ import annotations

import torch

RATIO_MIN = 0.25
RATIO_MAX = 4.0
NORM_EPS = 1e-6


def blend_retrievals(
    base: torch.Tensor,
    perturbed: torch.Tensor,
    beta: float | torch.Tensor,
    *,
    norm_match: bool = True,
    ratio_min: float = RATIO_MIN,
    ratio_max: float = RATIO_MAX,
    unscale: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Blend over the last axis (the feature axis of one head); returns fp32 (fp64 for fp64
    input), or ``out_dtype`` (the model's).

    ``beta`` may be a tensor broadcasting against ``base`` (e.g. [B, 1, 1, 1]). Non-finite
    values produced by the rescale are zeroed rather than propagated into the model.
    ``unscale``: base and perturbed come scaled by 1 / unscale, a power of two (the bf16
    two-call path's exact fp16 scaling); the blend scales with them exactly, so it is computed
    as they are and unscaled once, in the norm match's own multiply (the norm floor scaled
    alike): the same result, bit for bit, as unscaling both retrievals first.
    ``out_dtype``: that last multiply rounds into it (computed in fp32 all the same, the same
    bits as rounding the fp32 result afterwards; on accelerators as it stores), and the zeroing
    of non-finite values runs on the rounded output, so neither makes a full fp32 pass of its
    own; a value beyond the dtype's range, inf once rounded, is zeroed too rather than handed
    to the model.
    """
    dtype = torch.promote_types(base.dtype, torch.float32)  # fp64 inputs keep fp64
    base32 = base.to(dtype)
    pert32 = perturbed.to(dtype)
    weight = beta.to(device=base.device, dtype=dtype) if isinstance(beta, torch.Tensor) else beta
    new = torch.lerp(base32, pert32, weight)  # base + beta (perturbed - base), one pass
    if not norm_match:
        if unscale is not None:
            new = _scaled(new, unscale, out_dtype)
        return new if out_dtype in (None, new.dtype) else new.to(out_dtype)
    eps = NORM_EPS if unscale is None else NORM_EPS / unscale
    ref = torch.linalg.vector_norm(pert32, dim=-1, keepdim=True).clamp_min(eps)
    cur = torch.linalg.vector_norm(new, dim=-1, keepdim=True).clamp_min(eps)
    ratio = ref.div_(cur).clamp_(ratio_min, ratio_max)
    out = _scaled(new, ratio if unscale is None else ratio.mul_(unscale), out_dtype)
    return torch.nan_to_num_(out, nan=0.0, posinf=0.0, neginf=0.0)


def _scaled(new: torch.Tensor, factor: torch.Tensor, out_dtype: torch.dtype | None):
    """new * factor rounded to out_dtype (new's own: in place, new is the blend's own)."""
    if out_dtype in (None, new.dtype):
        return new.mul_(factor)
    if new.device.type == "cpu":
        # The CPU writes an output of another dtype through a temporary of the product's own
        # (a fresh fp32 buffer and a copy): in place, then one cast, costs less there.
        return new.mul_(factor).to(out_dtype)
    # Accelerators cast as they store: the fp32 product is never written
    return torch.mul(new, factor, out=torch.empty_like(new, dtype=out_dtype))
