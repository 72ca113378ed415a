"""The symmetry index eta_M in one or two Triton launches (Adaptive Circulation's per-call
extra work).

Each program streams its Q and K once in tiles of BLOCK_L tokens and keeps the three d x d Gram
matrices K^T K, K^T Q and Q^T Q in fp32 registers, fed by tensor-core products of the inputs as
they are (fp16/bf16; no concatenation, no fp32 copies), and takes the two traces of
hopfield/symmetry.py: one launch. That is only 20 programs at SDXL's 64 x 64 level, but on an
H200 splitting the tokens among more programs (``splits``: each chunk writes its Grams, and a
second launch sums them in a fixed order) measured slower at SDXL's 64 x 64 level and SD3's
1024², and a few microseconds faster at SDXL's 32 x 32 level, less than the second launch costs
the host there (benchmarks/bench_gpu.py --sweep; the README has the table). So one launch is
the default and the split is there to be asked for. The torch path it replaces on CUDA is nine
launches (concatenation, two Gram products, two products and their sums, clamp, division), each
a few microseconds of host time in every steered call of a launch-bound sampling step.

Used by ``symmetry_index`` on CUDA for fp16/bf16 with d of 64 or 128, in a torch.compile trace
too (as one registered op, ETA_OP, where a trace took the torch path before). A failure to
compile or launch warns once and hands the rest of the process to the torch path. The import is
lazy.
"""

from __future__ import annotations

import torch

from . import fused_triton, torch_ops
from .token_chunks import token_chunks
from .triton_launch import launcher_of

DEFAULT_SPLITS = 1  # chunks of the tokens unless a caller asks: one launch (the module's doc)
ETA_HEAD_DIMS = (64, 128)
ETA_DTYPES = (torch.float16, torch.bfloat16)
# (tokens per tile, warps, pipeline stages) per head dim: three fp32 d x d accumulators live in
# registers, so d = 128 takes more warps (benchmarks/compile_hopper.py --kernel eta: the fit).
ETA_CONFIGS = {64: (64, 4, 3), 128: (32, 8, 2)}

REDUCE_ROWS = 16  # Gram rows the reduction holds at a time (d = 128 fits in registers)

_FAILED: list[str] = []  # why eager calls stopped using the kernel in this process, if they did
_KERNELS: dict = {}


def _kernel():
    return _kernels()["index"]


def _reduce_kernel():
    return _kernels()["reduce"]


def _kernels() -> dict:
    if not _KERNELS:
        from .eta_triton_kernel import symmetry_index_fwd, symmetry_index_reduce

        _KERNELS.update(index=symmetry_index_fwd, reduce=symmetry_index_reduce)
    return _KERNELS


ETA_TENSOR_ARGS = 4  # q, k, eta, the workspace
REDUCE_TENSOR_ARGS = 2  # the workspace, eta
# what launches them: Triton's bookkeeping once per specialisation (triton_launch.py)
_launcher = launcher_of(_kernel, ETA_TENSOR_ARGS)
_reduce_launcher = launcher_of(_reduce_kernel, REDUCE_TENSOR_ARGS)


def eligible(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether ``symmetry_index`` takes the kernel for this call: compiled Triton on CUDA
    (never the interpreter there), fp16/bf16, d 64/128, q and k alike (in a compile trace as
    the registered op ETA_OP)."""
    return (
        q.is_cuda and q.dtype in ETA_DTYPES and q.ndim == 4 and q.shape == k.shape
        and q.shape[-1] in ETA_HEAD_DIMS and k.dtype == q.dtype and k.device == q.device
        and not _FAILED and fused_triton.kernel_usable()
        and fused_triton.tensor_core_dots(q.device)
    )


def symmetry_index_triton(q: torch.Tensor, k: torch.Tensor, *,
                          config: tuple[int, int, int] | None = None,
                          splits: int | None = None) -> torch.Tensor:
    """eta_M per (batch, head), [B, H] fp32, for q, k [B, H, L, d] with any strides (fp16/bf16
    on CUDA; also fp32, and the CPU under Triton's interpreter, for tests). ``config``:
    (tokens per tile, warps, stages) instead of ETA_CONFIGS; ``splits``: how many chunks the
    tokens are split into (default one: no split, see the module's docstring)."""
    eta = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
    size = workspace_size(q, config, splits)
    work = torch.empty(size, dtype=torch.float32, device=q.device) if size else eta
    for stage, grid, args, constexprs in launch_arguments(q, k, eta, work, config, splits):
        launcher_for(stage)[grid](*args, **constexprs)
    return eta


def chunks_of(q, config=None, splits=None) -> tuple[int, int]:
    """(chunks, tokens per chunk) of q's tokens (hopfield/token_chunks.py): DEFAULT_SPLITS
    unless ``splits`` asks for another count."""
    batch, heads, length, d = q.shape
    block_l = (config or ETA_CONFIGS[d])[0]
    return token_chunks(batch * heads, length, block_l, q.device, splits or DEFAULT_SPLITS)


def workspace_size(q, config=None, splits=None) -> int:
    """fp32 elements of the chunks' Grams; 0 when the tokens are not split (one launch)."""
    chunks, _ = chunks_of(q, config, splits)
    batch, heads, _, d = q.shape
    return 0 if chunks == 1 else batch * heads * chunks * 3 * d * d


def launch_arguments(q, k, eta, work, config: tuple[int, int, int] | None = None,
                     splits: int | None = None) -> list:
    """[(stage, grid, arguments, constexprs)] of the launches writing ``eta``: "index" alone,
    or "index" (the chunks' Grams into ``work``, workspace_size elements) then "reduce"
    (fused_plan.py and stability_triton.py replay them). Each stage's first
    ETA_TENSOR_ARGS / REDUCE_TENSOR_ARGS arguments are tensors; unsplit, ``work`` is unused
    (pass eta)."""
    batch, heads, length, d = q.shape
    block_l, warps, stages = config or ETA_CONFIGS[d]
    chunks, chunk = chunks_of(q, config, splits)
    split = chunks > 1
    found = [("index", (batch * heads, chunks),
              (*stage_tensors("index", q, k, eta, work), *q.stride(), *k.stride(), heads,
               length, chunk),
              dict(D=d, BLOCK_L=block_l,
                   # The interpreter multiplies bf16 as raw integers (numpy has no bf16).
                   UPCAST=fused_triton.facts().interpreting and q.dtype == torch.bfloat16,
                   PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # else ignored
                   SPLIT=split, num_warps=warps, num_stages=stages))]
    if split:
        found.append(("reduce", (batch * heads,), (*stage_tensors("reduce", q, k, eta, work),
                                                   chunks),
                      dict(D=d, ROWS=REDUCE_ROWS, num_warps=4, num_stages=1)))
    return found


def stage_tensors(stage: str, q, k, eta, work) -> tuple:
    """The tensors a stage of launch_arguments takes first, in its order (plans replay a
    stage with a call's own tensors through this)."""
    return (q, k, eta, work) if stage == "index" else (work, eta)


def launcher_for(stage: str):
    """The cached launcher of a stage of launch_arguments."""
    return _launcher() if stage == "index" else _reduce_launcher()


def tensor_args(stage: str) -> int:
    return ETA_TENSOR_ARGS if stage == "index" else REDUCE_TENSOR_ARGS


def failed() -> bool:
    """Whether the kernel failed here (eager calls then take the torch path)."""
    return bool(_FAILED)


def try_symmetry_index(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """The kernel's eta, or None after it failed here (warned once; the caller takes the torch
    path, now and for the rest of the process)."""
    return fused_triton.first_failure_hands_over(
        "symmetry-index", _FAILED, lambda: symmetry_index_triton(q, k))


def _op_impl(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """ETA_OP as a compiled graph runs it: the kernel's eta, or the torch path's where the
    kernel failed in this process (the graph was traced before it knew)."""
    eta = None if _FAILED else try_symmetry_index(q, k)
    if eta is None:
        from .symmetry import symmetry_index_torch

        eta = symmetry_index_torch(q, k)
    return eta


def _op_fake(q, k):
    return q.new_empty(q.shape[:2], dtype=torch.float32)


# The kernel as one torch op (hopfield/torch_ops.py): what a compile trace calls
ETA_OP = torch_ops.register("symmetry_index", "(Tensor q, Tensor k) -> Tensor", _op_impl,
                            _op_fake)
