"""Skew circulation control for one self-attention call (paper section 5, Algorithm 1, eq. 37-42).

Two formulations:

* value space (default): the retrievals are attention outputs softmax(A) V per head (width d);
  the blend is linear, so without norm matching it equals the paper's input-space blend followed
  by W_v exactly; with norm matching the per-token norm is taken over the head's d value
  channels instead of the C input channels. Cost about 3x one attention call, no L x L matrix.
* input space ("paper-exact"): the retrievals are softmax(A) X over the block input X
  (width C per head), blended and norm-matched there, then projected by the head's slice of W_v,
  as in the authors' code. Many times the cost of one attention call (C >> d); for validation.

Every coefficient stays a device tensor: nothing here synchronises with the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import fused_triton  # imports Triton only when the kernel first runs
from .input_space import steered_input_retrieval
from .symmetry import adaptive_coefficients, aggregate_eta, symmetry_index
from .two_call import own_baseline, two_call

KERNELS = ("auto", "fused", "two_call")


@dataclass(frozen=True)
class CirculationSettings:
    """What a node asks for. ``alpha`` scales M_skew, ``beta`` injects the change."""

    alpha: float = 1.05
    beta: float = 3.0
    adaptive: bool = False
    eta_per_sample: bool = True  # False: one eta-bar per attention call, as in the paper
    norm_match: bool = True
    kernel: str = "auto"  # "auto": fused Triton kernel on CUDA when it fits; "fused"; "two_call"

    def __post_init__(self):
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")

    @property
    def is_identity(self) -> bool:
        """alpha = 1 (no skew change) or beta = 0 (nothing injected): the model runs unpatched."""
        return self.alpha == 1.0 or self.beta == 0.0


@dataclass
class CirculationResult:
    out: torch.Tensor  # [B, H, L, d], the base retrieval's dtype
    eta_bar: torch.Tensor | None = None  # [B] or [1], fp32, adaptive mode only
    # The coefficients really applied (alpha_eff, beta_eff when adaptive): floats, or
    # [B|1, 1, 1, 1] tensors; None when nothing was applied (identity settings)
    alpha: torch.Tensor | float | None = None
    beta: torch.Tensor | float | None = None


def _per_sample(value: torch.Tensor | float, ndim: int) -> torch.Tensor | float:
    """[B] -> [B, 1, ..., 1] so a per-sample coefficient broadcasts over heads, tokens, features."""
    if isinstance(value, torch.Tensor):
        return value.reshape(value.shape[0], *([1] * (ndim - 1)))
    return value


def effective_coefficients(
    q: torch.Tensor, k: torch.Tensor, settings: CirculationSettings
) -> tuple[torch.Tensor | float, torch.Tensor | float, torch.Tensor | None]:
    """(alpha_eff, beta_eff, eta_bar): floats when static, [B|1, 1, 1, 1] tensors when adaptive."""
    if not settings.adaptive:
        return settings.alpha, settings.beta, None
    eta_bar = aggregate_eta(symmetry_index(q, k), settings.eta_per_sample)
    alpha_eff, beta_eff = adaptive_coefficients(settings.alpha, settings.beta, eta_bar)
    return _per_sample(alpha_eff, q.ndim), _per_sample(beta_eff, q.ndim), eta_bar


def _select_rows(
    steered: torch.Tensor, base: torch.Tensor, active: torch.Tensor | None
) -> torch.Tensor:
    """Keep the baseline bit for bit on samples the user did not select (e.g. the uncond half)."""
    if active is None:
        return steered
    return torch.where(_per_sample(active, base.ndim), steered, base)


def needs_baseline(q, k, v, settings: CirculationSettings, active=None,
                   fused: bool | None = None) -> bool:
    """Whether circulate_value_space needs the host's baseline output. Not on the fused path
    (the kernel computes the baseline in the same pass, and the plain output of unselected
    samples too: 2x one call instead of 3x), nor on the two-call path for bf16 (it computes
    its own baseline in a finer dtype, see two_call.py) unless some samples keep the host's.
    ``fused``: the answer of ``use_fused`` for this call, when the caller has it already."""
    if settings.is_identity:
        return True
    if fused is None:
        fused = use_fused(q, k, v, settings.kernel)
    if fused:
        return False
    return active is not None or not own_baseline(q)


def circulate_value_space(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    base: torch.Tensor | None,
    settings: CirculationSettings,
    active: torch.Tensor | None = None,
    *,
    fused: bool | None = None,
) -> CirculationResult:
    """Steer one attention call. q, k, v, base: [B, H, L, d]; ``base`` is the host's own output
    (None is allowed where ``needs_baseline`` says so).

    ``active``: optional bool [B] of the samples to steer; others get ``base`` back untouched.
    ``fused``: ``use_fused(q, k, v, settings.kernel)`` when the caller asked it already (the
    attention hook asks once per call, to know whether to run the host's call at all).
    """
    if settings.is_identity:
        if base is None:
            raise ValueError("circulate_value_space: this path needs the baseline output")
        return CirculationResult(base)
    if fused is None:
        fused = use_fused(q, k, v, settings.kernel)
    if base is None and needs_baseline(q, k, v, settings, active, fused):
        raise ValueError("circulate_value_space: this path needs the baseline output")
    dtype = q.dtype if base is None else base.dtype  # the model's: what the call returns
    if fused and settings.adaptive and not torch.compiler.is_compiling():
        # eta_M, then one launch that derives the coefficients itself (eager calls; a compile
        # trace takes the path below: eta's op, the coefficients' torch ops, the fused op).
        out, coefficients = fused_triton.fused_adaptive_circulation(
            q, k, v, symmetry_index(q, k), settings.alpha, settings.beta,
            per_sample=settings.eta_per_sample, norm_match=settings.norm_match, active=active,
            fallback=settings.kernel == "auto")
        eta_bar, alpha, beta = coefficients.unbind(0)
        alpha, beta = _per_sample(alpha, q.ndim), _per_sample(beta, q.ndim)
    else:
        alpha, beta, eta_bar = effective_coefficients(q, k, settings)
        if fused:
            # Unselected samples: the kernel's own plain attention, unless the host's was
            # computed anyway (another override chained before ours), which then keeps them
            # bit for bit.
            out = fused_triton.fused_skew_circulation(
                q, k, v, alpha, beta, norm_match=settings.norm_match, active=active,
                fallback=settings.kernel == "auto", alpha_hint=settings.alpha)
        else:
            out = two_call(q, k, v, base, alpha, beta, settings.norm_match, out_dtype=dtype)
    if out.dtype != dtype:
        out = out.to(dtype)
    if base is not None and active is not None:
        out = _select_rows(out, base, active)
    return CirculationResult(out, eta_bar, alpha, beta)


def circulate_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    base: torch.Tensor,
    settings: CirculationSettings,
    rows: slice,
) -> torch.Tensor:
    """Static settings on the two-call path, for a call whose steered samples are one run of
    rows known on the host (the cond or uncond chunk of a CFG batch): only those rows are
    computed, the others are ``base`` bit for bit. Half the work of steering every row and
    then keeping half, and no row mask. Returns [B, H, L, d] in ``base``'s memory layout."""
    if settings.adaptive:
        raise ValueError("circulate_rows: adaptive settings mix the rows (eta per call)")
    part = circulate_value_space(q[rows], k[rows], v[rows], base[rows], settings,
                                 fused=False).out
    # Concatenated with the batch axis first in base's own layout (usually the host's
    # [B, L, H, d]), so the hook hands the result back without a copy.
    batch = base.shape[0]
    pieces = [t for t, keep in ((base[: rows.start], rows.start > 0), (part, True),
                                (base[rows.stop:], rows.stop < batch)) if keep]
    perm = (0, *sorted(range(1, base.ndim), key=lambda i: -base.stride(i)))
    joined = torch.cat([t.permute(perm) for t in pieces])
    return joined.permute(tuple(perm.index(i) for i in range(base.ndim)))


def use_fused(q, k, v, kernel: str) -> bool:
    """auto: the single-pass Triton kernel when it is compiled for CUDA and the call fits
    (fp16/bf16, d 64/128, self-attention); "fused" forces it (it raises on what does not fit)."""
    if kernel == "two_call":
        return False
    return kernel == "fused" or fused_triton.auto_eligible(q, k, v)


def circulate_input_space(
    q: torch.Tensor,
    k: torch.Tensor,
    x: torch.Tensor,
    w_v: torch.Tensor,
    b_v: torch.Tensor | None,
    base: torch.Tensor,
    settings: CirculationSettings,
    active: torch.Tensor | None = None,
) -> CirculationResult:
    """The authors' formulation: retrieve over the block input, blend there, then apply W_v.

    q, k: [B, H, L, d]; x: [B, L, C] (the normed block input attn1 projects from);
    w_v: [H * d, C]; b_v: [H * d] or None; base: [B, H, L, d] (the host's output, returned
    untouched when the settings are the identity or a sample is not selected).
    """
    if settings.is_identity:
        return CirculationResult(base)
    heads, d = q.shape[1], q.shape[-1]
    alpha, beta, eta_bar = effective_coefficients(q, k, settings)
    _, blended = steered_input_retrieval(q, k, x, alpha, beta, settings.norm_match)
    w_heads = w_v.to(blended.dtype).reshape(heads, d, -1)  # [H, d, C]
    out = torch.einsum("bhlc,hdc->bhld", blended, w_heads)
    if b_v is not None:
        out = out + b_v.to(out.dtype).reshape(1, heads, 1, d)
    return CirculationResult(_select_rows(out.to(base.dtype), base, active), eta_bar, alpha, beta)
