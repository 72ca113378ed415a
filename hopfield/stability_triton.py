"""The Stability Probe's measures of one attention call in one Triton launch.

``layer_stability`` (hopfield/stability.py) needs three batched products and some twenty-five
elementwise passes and reductions per probed call; in a launch-bound sampling step each costs
host time. Here one program per (sample, head) sweeps its tokens three times: the retrieval's
column means, then every Gram matrix (eta's K^T K, K^T Q, Q^T Q and the field's K^T Xc,
Q^T Xc, fp32 accumulators fed by tensor-core products of the model-dtype inputs), then the
field tile by tile with its reductions. It writes E, r, Align and eta per head and lambda summed
per token; two small torch ops average over heads. Same math and the same roundings as the
torch path (the centred retrieval and the field's weights rounded to the model's dtype before
their products, everything else fp32).

Used by ``layer_stability`` in eager mode on CUDA when q, k and the retrieval share fp16 or
bf16 and both widths are 64 (SDXL's and SD3's heads, the value basis or a 64-channel input
basis); other calls keep the torch path. A failure to compile or launch warns once and hands
the rest of the process to the torch path. The import is lazy.
"""

from __future__ import annotations

import math
import warnings

import torch

from . import fused_triton

STABILITY_WIDTHS = (64,)  # five fp32 64 x 64 accumulators fit one program's registers
STABILITY_DTYPES = (torch.float16, torch.bfloat16)
# (tokens per tile, warps, pipeline stages): benchmarks/compile_hopper.py --kernel stability
STABILITY_CONFIG = (32, 8, 2)

_FAILED: list[str] = []
_KERNEL = None


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        from .stability_triton_kernel import stability_fwd

        _KERNEL = stability_fwd
    return _KERNEL


def eligible(q: torch.Tensor, k: torch.Tensor, retrieval: torch.Tensor) -> bool:
    """Whether ``layer_stability`` takes the kernel: compiled Triton on CUDA, outside a compile
    trace, q, k and the retrieval [B, H, L, 64] of one half-precision dtype."""
    return (
        q.is_cuda and q.dtype in STABILITY_DTYPES and q.ndim == 4 and q.shape == k.shape
        and retrieval.shape[:3] == q.shape[:3] and q.shape[-1] in STABILITY_WIDTHS
        and retrieval.shape[-1] in STABILITY_WIDTHS
        and k.dtype == q.dtype == retrieval.dtype
        and k.device == q.device == retrieval.device
        and not _FAILED and fused_triton.kernel_usable()
        and not torch.compiler.is_compiling()
    )


def stability_triton(q: torch.Tensor, k: torch.Tensor, retrieval: torch.Tensor, *,
                     config: tuple[int, int, int] | None = None):
    """(per head [B, H, 4]: E, r, Align, eta; token map [B, L]) for q, k [B, H, L, d] and the
    retrieval [B, H, L, m], any strides (fp16/bf16 on CUDA; also fp32, and the CPU under
    Triton's interpreter, for tests). ``config``: (tokens per tile, warps, stages)."""
    batch, heads, length, d = q.shape
    m = retrieval.shape[-1]
    block_l, warps, stages = config or STABILITY_CONFIG
    per_head = torch.empty(batch, heads, 4, dtype=torch.float32, device=q.device)
    tokens = torch.empty(batch, heads, length, dtype=torch.float32, device=q.device)
    _kernel()[(batch * heads,)](
        q, k, retrieval, per_head, tokens,
        *q.stride(), *k.stride(), *retrieval.stride(),
        heads, length, 0.5 / math.sqrt(d), 1.0 / (heads * m),
        D=d, M=m, BLOCK_L=block_l,
        UPCAST=fused_triton.facts().interpreting and q.dtype == torch.bfloat16,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # else ignored
        num_warps=warps, num_stages=stages,
    )
    return per_head, tokens.sum(dim=1)


def try_stability(q: torch.Tensor, k: torch.Tensor, retrieval: torch.Tensor):
    """``stability_triton``'s result, or None after it failed here (warned once; the caller
    takes the torch path, now and for the rest of the process)."""
    try:
        return stability_triton(q, k, retrieval)
    except Exception as error:  # any compile or launch failure; reported once, not retried
        _FAILED.append(f"{type(error).__name__}: {error}")
        warnings.warn(f"Hopfield Circulation: the Stability Probe's Triton kernel failed here "
                      f"({error!r}); using the torch path from now on", RuntimeWarning,
                      stacklevel=2)
        return None
