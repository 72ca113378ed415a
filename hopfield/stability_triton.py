"""The Stability Probe's measures of one attention call in one Triton launch.

``layer_stability`` (hopfield/stability.py) needs three batched products and some twenty-five
elementwise passes and reductions per probed call; in a launch-bound sampling step each costs
host time. Here one program per (sample, head, 64 retrieval columns) sweeps its tokens three
times: the columns' means, then every Gram matrix (the field's K^T Xc, Q^T Xc and, at d = 64,
eta's K^T K, K^T Q, Q^T Q: fp32 accumulators fed by tensor-core products of the model-dtype
inputs), then the field tile by tile with its reductions. It writes each program's share of
E, r, Align, eta and of the lambda map; two small torch sums give the call's values. Same
math and the same roundings as the torch path (the centred retrieval and the field's weights
rounded to the model's dtype before their products, everything else fp32).

Used by ``layer_stability`` in eager mode on CUDA when q, k and the retrieval share fp16 or
bf16 with widths (d, m) of (64, 64) (SDXL's and SD3's heads in the value basis, or a 64-channel
input basis) or (128, 128) (Flux, Chroma, Qwen-Image: eta then by its own kernel, two launches);
other calls keep the torch path. A failure to compile or launch warns once and hands
the rest of the process to the torch path. The import is lazy.
"""

from __future__ import annotations

import math

import torch

from . import fused_triton
from .triton_launch import launcher_of

STABILITY_DTYPES = (torch.float16, torch.bfloat16)
# (head dim d, feature width m) -> (tokens per tile, warps, pipeline stages), from
# benchmarks/compile_hopper.py --kernel stability. At d = 64 all five Grams fit one program's
# registers; at d = 128 (Flux, Chroma, Qwen-Image) the field's two do, for 64 columns per
# program, and eta comes from its own kernel (hopfield/eta_triton.py), one launch more.
# 64 tokens per tile: the field's products then have 64 rows, the least Hopper's warpgroup
# tensor-core instructions take (with 32 the compiler falls back to the older ones).
STABILITY_CONFIGS = {(64, 64): (64, 8, 2), (128, 128): (64, 8, 2)}
M_BLOCK = 64  # retrieval columns per program: wider retrievals take several programs

_FAILED: list[str] = []
_KERNEL = None


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        from .stability_triton_kernel import stability_fwd

        _KERNEL = stability_fwd
    return _KERNEL


STABILITY_TENSOR_ARGS = 5  # q, k, retrieval, parts, tokens
# what launches it: Triton's bookkeeping once per specialisation (triton_launch.py)
_launcher = launcher_of(_kernel, STABILITY_TENSOR_ARGS)


def eligible(q: torch.Tensor, k: torch.Tensor, retrieval: torch.Tensor) -> bool:
    """Whether ``layer_stability`` takes the kernel: compiled Triton on CUDA, outside a compile
    trace, q, k and the retrieval of one half-precision dtype, widths in STABILITY_CONFIGS."""
    return (
        q.is_cuda and q.dtype in STABILITY_DTYPES and q.ndim == 4 and q.shape == k.shape
        and retrieval.ndim == 4 and retrieval.shape[:3] == q.shape[:3]
        and (q.shape[-1], retrieval.shape[-1]) in STABILITY_CONFIGS
        and k.dtype == q.dtype == retrieval.dtype
        and k.device == q.device == retrieval.device
        and not _FAILED and fused_triton.kernel_usable()
        and not torch.compiler.is_compiling()
    )


def stability_triton(q: torch.Tensor, k: torch.Tensor, retrieval: torch.Tensor, *,
                     config: tuple[int, int, int] | None = None):
    """(per sample [B, 4]: E, r, Align, eta, each averaged over heads and features; the lambda
    map [B, L]) for q, k [B, H, L, d] and the retrieval [B, H, L, m], any strides (fp16/bf16
    on CUDA; also fp32, and the CPU under Triton's interpreter, for tests). ``config``:
    (tokens per tile, warps, stages)."""
    batch, heads, length, d = q.shape
    m = retrieval.shape[-1]
    block_l, warps, stages = config or STABILITY_CONFIGS[(d, m)]
    with_eta = d == 64
    blocks = m // M_BLOCK
    parts = torch.empty(batch, heads, blocks, 4, dtype=torch.float32, device=q.device)
    tokens = torch.empty(batch, heads, blocks, length, dtype=torch.float32, device=q.device)
    _launcher()[(batch * heads, blocks)](
        q, k, retrieval, parts, tokens,
        *q.stride(), *k.stride(), *retrieval.stride(),
        heads, length, 0.5 / math.sqrt(d), 1.0 / (heads * m), 1.0 / (heads * m),
        D=d, M_BLOCK=M_BLOCK, BLOCK_L=block_l,
        UPCAST=fused_triton.facts().interpreting and q.dtype == torch.bfloat16,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # else ignored
        WITH_ETA=with_eta, num_warps=warps, num_stages=stages,
    )
    values = parts.sum(dim=(1, 2))
    if not with_eta:
        from .eta_triton import symmetry_index_triton

        values[:, 3] = symmetry_index_triton(q, k).mean(dim=1)
    return values, tokens.sum(dim=(1, 2))


def try_stability(q: torch.Tensor, k: torch.Tensor, retrieval: torch.Tensor):
    """``stability_triton``'s result, or None after it failed here (warned once; the caller
    takes the torch path, now and for the rest of the process)."""
    return fused_triton.first_failure_hands_over(
        "Stability Probe", _FAILED, lambda: stability_triton(q, k, retrieval))
