"""The symmetry index eta_M in one Triton launch (Adaptive Circulation's per-call extra work).

One program per (batch, head) streams its Q and K once in tiles of BLOCK_L tokens and keeps the
three d x d Gram matrices K^T K, K^T Q and Q^T Q in fp32 registers, fed by tensor-core products
of the inputs as they are (fp16/bf16; no concatenation, no fp32 copies); its epilogue takes the
two traces of hopfield/symmetry.py and writes eta. The torch path it replaces on CUDA is seven
launches (concatenation, Gram product, roll, product, block sum, clamp, division), each a few
microseconds of host time in every steered call of a launch-bound sampling step.

Used by ``symmetry_index`` in eager mode on CUDA for fp16/bf16 with d of 64 or 128; a torch.compile
trace keeps the torch path (inductor fuses it there). A failure to compile or launch warns once
and hands the rest of the process to the torch path. The import is lazy.
"""

from __future__ import annotations

import torch

from . import fused_triton
from .triton_launch import launcher_of

ETA_HEAD_DIMS = (64, 128)
ETA_DTYPES = (torch.float16, torch.bfloat16)
# (tokens per tile, warps, pipeline stages) per head dim: three fp32 d x d accumulators live in
# registers, so d = 128 takes more warps (benchmarks/compile_hopper.py --kernel eta: the fit).
ETA_CONFIGS = {64: (64, 4, 3), 128: (32, 8, 2)}

_FAILED: list[str] = []  # why eager calls stopped using the kernel in this process, if they did
_KERNEL = None


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        from .eta_triton_kernel import symmetry_index_fwd

        _KERNEL = symmetry_index_fwd
    return _KERNEL


ETA_TENSOR_ARGS = 3  # q, k, eta
# what launches it: Triton's bookkeeping once per specialisation (triton_launch.py)
_launcher = launcher_of(_kernel, ETA_TENSOR_ARGS)


def eligible(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether ``symmetry_index`` takes the kernel for this call: compiled Triton on CUDA
    (never the interpreter there), fp16/bf16, d 64/128, q and k alike, outside a compile trace."""
    return (
        q.is_cuda and q.dtype in ETA_DTYPES and q.ndim == 4 and q.shape == k.shape
        and q.shape[-1] in ETA_HEAD_DIMS and k.dtype == q.dtype and k.device == q.device
        and not _FAILED and fused_triton.kernel_usable()
        and not torch.compiler.is_compiling()
    )


def symmetry_index_triton(q: torch.Tensor, k: torch.Tensor, *,
                          config: tuple[int, int, int] | None = None) -> torch.Tensor:
    """eta_M per (batch, head), [B, H] fp32, for q, k [B, H, L, d] with any strides (fp16/bf16
    on CUDA; also fp32, and the CPU under Triton's interpreter, for tests). ``config``:
    (tokens per tile, warps, stages) instead of ETA_CONFIGS."""
    eta = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
    grid, args, constexprs = launch_arguments(q, k, eta, config)
    _launcher()[grid](*args, **constexprs)
    return eta


def launch_arguments(q, k, eta, config: tuple[int, int, int] | None = None):
    """(grid, arguments, constexprs) of the launch writing ``eta`` (fused_plan.py replays
    them); the first ETA_TENSOR_ARGS arguments are tensors."""
    batch, heads, length, d = q.shape
    block_l, warps, stages = config or ETA_CONFIGS[d]
    args = (q, k, eta, *q.stride(), *k.stride(), heads, length)
    constexprs = dict(
        D=d, BLOCK_L=block_l,
        # The interpreter multiplies bf16 as raw integers (numpy has no bf16): upcast there.
        UPCAST=fused_triton.facts().interpreting and q.dtype == torch.bfloat16,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # else ignored
        num_warps=warps, num_stages=stages,
    )
    return (batch * heads,), args, constexprs


def failed() -> bool:
    """Whether the kernel failed here (eager calls then take the torch path)."""
    return bool(_FAILED)


def try_symmetry_index(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """The kernel's eta, or None after it failed here (warned once; the caller takes the torch
    path, now and for the rest of the process)."""
    return fused_triton.first_failure_hands_over(
        "symmetry-index", _FAILED, lambda: symmetry_index_triton(q, k))
