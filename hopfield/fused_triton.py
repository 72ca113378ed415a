"""Single-pass skew-circulation attention in Triton (value space, one launch, no L x L memory).

Each program owns one query tile i (BLOCK_M rows) of one (batch, head) and streams the key
tiles j (BLOCK_N rows) once. It holds Q_i and K_i; per key tile it loads K_j, Q_j, V_j and
keeps two online softmaxes over the same tiles:

    S1 = Q_i K_j^T * s                  the baseline logits M_ij
    A  = c1 * S1 + c2 * (K_i Q_j^T * s) M_sym + alpha M_skew, since (K Q^T)_ij = M_ji

accumulating in fp32 either P1 V_j and (P2 - P1) V_j at P2's scale (alpha >= 1), or P2 V_j and
(P1 - P2) V_j at P1's (0 <= alpha < 1), or P1 V_j and P2 V_j apart (alpha < 0): see
``accumulation_form``. The epilogue blends and norm-matches in fp32 with the
semantics of hopfield.blend.blend_retrievals (reference norm = the perturbed retrieval's, ratio
clamped to [0.25, 4], eps 1e-6, non-finite -> 0) and writes one output in the input dtype.

Cost: 2x the matmul FLOPs and exps of one flash-attention call with the same compulsory HBM
traffic (the K side streams three tiles instead of two). The two-call path costs 3x and rounds
both retrievals to the model dtype before their small difference is amplified by beta, which
is what loses accuracy in bf16 (benchmarks/precision.py).

What runs in fp32: logits (tensor-core dot products accumulate in fp32), the running maxima and
sums, both P V accumulators and the whole epilogue. P is rounded for the P V product, as in
every flash-attention kernel: to fp16 for fp16 inputs, and to fp16 as well for bf16 inputs,
with V converted to fp16 by one pass before the launch (exact for every bf16 value under
2^16; a program whose P V met a larger value, and so inf, sweeps its head's V and runs its
rows again on V scaled by a power of two, in the same launch): bf16's
8-bit mantissa on P would cost a multiple of the unavoidable output-rounding error on Δ at
alpha near 1, fp16 barely adds to it (benchmarks/precision.py prints both). Rounding the
difference of the two P's rather than each keeps fp16's Δ near that error too. fp32 inputs use
tf32 tensor-core dot products (fp16-grade logits): "tf32x3" or "ieee" would need more registers
than Hopper has per thread (they spill, benchmarks/compile_hopper.py), so ``kernel="auto"``
sends fp32 models to the exact two-call path and uses this kernel for fp16 and bf16 only.

alpha and beta are Python numbers (passed by value) or per-sample device tensors (adaptive
mode, [B] or [1] after flattening, any dtype): nothing here syncs with the host. In eager
adaptive calls the kernel instead takes eta_M [B, H] and derives eta-bar, alpha_eff and
beta_eff itself (``fused_adaptive_circulation``), recording them for the caller. The import is
lazy: the pack works without Triton; ``available()`` says whether this path can run.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass

import torch

from . import fused_tiles, torch_ops
from .device_facts import asked_once
from .fused_tiles import TUNE_ENV, LaunchConfig
from .triton_launch import launcher_of

SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = 1.4426950408889634
AUTO_DTYPES = (torch.float16, torch.bfloat16)  # fp32 runs here only when asked (tf32 products)
FP32_DOT_PRECISION = "tf32"
MAX_GRID_Y = 65535  # CUDA's limit on the second grid axis, which runs over batch x heads


def interpreting() -> bool:
    """True under Triton's CPU interpreter (TRITON_INTERPRET=1): tests and CPU studies only."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def available() -> bool:
    """Whether Triton imports (an optional dependency of the pack); asked once per process."""
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install that fails while importing
        return False
    return True


_DISABLED: list[str] = []  # why "auto" stopped using the kernel in this process, if it did


def disable_auto(reason: str) -> None:
    """Stop ``kernel="auto"`` from choosing this kernel for the rest of the process (after it
    failed to compile or launch here: Triton imports but lacks, e.g., a C compiler)."""
    if not _DISABLED:
        _DISABLED.append(reason)


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Shapes and dtypes the kernel handles: self-attention [B, H, L, d], one dtype, d 64/128."""
    return (
        q.ndim == 4 and q.shape == k.shape == v.shape
        and q.shape[-1] in SUPPORTED_HEAD_DIMS and q.shape[-2] > 0
        and q.shape[0] * q.shape[1] <= MAX_GRID_Y
        and q.dtype in SUPPORTED_DTYPES and k.dtype == q.dtype and v.dtype == q.dtype
        and k.device == q.device and v.device == q.device
    )


@dataclass
class ProcessFacts:
    """What this process offers the kernel, asked once: then plain attributes that torch.compile
    guards on, instead of tracing an import and an environment lookup in every graph."""

    triton: bool  # available()
    interpreting: bool  # interpreting()
    tune: bool = True  # TUNE_ENV is not "0"
    # torch built for ROCm, whose "cuda" tensors Triton's AMD backend would take: the kernels
    # have run on NVIDIA GPUs only, so AMD's stay on the two-call and torch paths
    rocm: bool = False


_FACTS: list[ProcessFacts] = []


def facts() -> ProcessFacts:
    """The process facts; the circulation asks for them when it patches a model, so a
    compiled graph finds them settled."""
    if not _FACTS:
        _FACTS.append(ProcessFacts(available(), interpreting(),
                                   os.environ.get(TUNE_ENV, "1") != "0",
                                   torch.version.hip is not None))
    return _FACTS[0]


def disabled() -> bool:
    """Whether the kernel failed here, and ``kernel="auto"`` stopped choosing it."""
    return bool(_DISABLED)


def first_failure_hands_over(what: str, failed: list[str], run):
    """``run()``, or None when it raises (a kernel that does not compile or launch here): the
    failure goes into ``failed`` (which its eligibility check reads, so the kernel is not tried
    again in this process) and is reported once, with the torch path taking over."""
    try:
        return run()
    except Exception as error:  # any compile or launch failure
        failed.append(f"{type(error).__name__}: {error}")
        warnings.warn(f"Hopfield Circulation: the {what} Triton kernel failed here ({error!r});"
                      " using the torch path from now on", RuntimeWarning, stacklevel=3)
        return None


def kernel_usable() -> bool:
    """Triton compiles here (not the interpreter) for an NVIDIA GPU (not ROCm), and no kernel
    failed in this process."""
    found = facts()
    return found.triton and not found.interpreting and not found.rocm and not _DISABLED


_TENSOR_CORE_DOTS: dict[int, bool] = {}
TENSOR_CORE_CAPABILITY = (8, 0)  # Triton's supported NVIDIA hardware: Ampere and newer


def tensor_core_dots(device: torch.device) -> bool:
    """Whether Triton's dot products run on tensor cores on this CUDA device (compute
    capability 8.0 or newer, the hardware Triton supports). On older GPUs (T4, RTX 20xx:
    sm_75) Triton (3.6 and 3.9) makes the kernels' products scalar FMAs: a minute's compile per
    tile into some 50,000 FFMA instructions, twice an attention's products on units a T4 runs
    at 8 TFLOP/s where the host's attention gets its tensor cores' 65. Asked once per device,
    outside any torch.compile trace (the circulation asks when it patches a model; a trace that
    finds it unasked answers no, and takes the two-call path every device can run)."""
    return asked_once(_TENSOR_CORE_DOTS, device,
                      lambda capability: capability >= TENSOR_CORE_CAPABILITY)


def settle(device: torch.device) -> None:
    """Ask, outside any compiled graph, what the kernels' eligibility asks once per process or
    device (Triton's presence, half-precision products into fp32, tensor cores), so that a
    compile trace, which finds an unasked question answered no and takes a slower path, reads
    the answers. Each node calls this when it patches a model."""
    from .skew import narrow_values
    from .symmetry import half_into_fp32

    facts()
    half_into_fp32(device)
    tensor_core_dots(device)
    narrow_values(device, 64)


def auto_eligible(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether ``kernel="auto"`` takes this kernel: compiled on CUDA, fp16/bf16, shapes fit, a
    GPU whose tensor cores Triton's products use. Never under the interpreter (it would run
    CUDA tensors at interpreter speed)."""
    return q.is_cuda and q.dtype in AUTO_DTYPES and supports(q, k, v) and kernel_usable() \
        and tensor_core_dots(q.device)


def settled_config(q: torch.Tensor) -> LaunchConfig | None:
    """The tiles q's calls take in this process without timing anything (fused_tiles.py);
    None while q's shape class waits for its timing."""
    return fused_tiles.settled_config(q, facts())


_KERNEL = None


def _kernel():
    """The jit'ed kernel, imported on first use. Whether it runs compiled or interpreted is fixed
    by TRITON_INTERPRET when Triton is first imported in the process."""
    global _KERNEL
    if _KERNEL is None:
        from .fused_triton_kernel import skew_circulation_fwd

        _KERNEL = skew_circulation_fwd
    return _KERNEL


# The kernel's tensor arguments, first and in this order (tests find them by name)
FUSED_TENSORS = ("q", "k", "v", "out", "alpha", "beta", "v16", "active", "eta",
                 "coefficients")
FUSED_TENSOR_ARGS = len(FUSED_TENSORS)
# what launches it: Triton's bookkeeping once per specialisation (triton_launch.py)
_launcher = launcher_of(_kernel, FUSED_TENSOR_ARGS)


def accumulation_form(alpha: float) -> tuple[bool, bool]:
    """(DIFFERENCE, ANCHOR_PERT) for the kernel, by which side of 1 alpha is on (a per-sample
    or adaptive alpha stays on its user's side). P V rounds P to 16 bits; two softmaxes
    rounded apart leave Delta 2-4x the output's own rounding when it is a few percent of the
    output (alpha near 1). Accumulating their difference at the peakier softmax's scale rounds
    Delta itself instead: anchored on the baseline for alpha >= 1, on the circulation-scaled
    softmax for 0 <= alpha < 1; for alpha < 0, where neither dominates, the two apart (each
    choice the best of the three over alpha and logit spread under the interpreter, whose
    roundings the H200 reproduced: README, GPU; tests/core/fused_kernel_cases.py). NaN (a
    tensor alpha of unknown side): apart, which is never far off; a wrong anchor can be."""
    if alpha >= 1.0:
        return True, False
    if alpha >= 0.0:
        return True, True
    return False, False


def _coefficient(value, batch: int, name: str):
    """(flat tensor or None, value): a per-sample tensor stays on the device as it is."""
    if isinstance(value, torch.Tensor):
        flat = value.reshape(-1)  # [B, 1, 1, 1] and [B] are views, no copy
        if flat.numel() not in (1, batch):
            raise ValueError(f"fused kernel: {name} has {flat.numel()} values for batch {batch}")
        return flat, 0.0
    return None, float(value)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           active: torch.Tensor | None) -> None:
    """What the kernel needs of its inputs, with what to do instead when they do not fit."""
    if not supports(q, k, v):
        raise ValueError(
            f"fused kernel: needs q, k, v of one shape [B, H, L, d] on one device with d in "
            f"{SUPPORTED_HEAD_DIMS}, one dtype of fp16/bf16/fp32 and B*H <= {MAX_GRID_Y}; got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}, {q.dtype}/{k.dtype}/"
            f"{v.dtype}; use kernel='two_call' for other shapes")
    found = facts()
    if not found.triton:
        raise RuntimeError("fused kernel: Triton is not installed (pip install triton, or "
                           "triton-windows on Windows); use kernel='auto' or 'two_call'")
    if not q.is_cuda and not found.interpreting:
        raise RuntimeError("fused kernel: needs CUDA tensors (on the CPU it runs only under "
                           "Triton's interpreter, TRITON_INTERPRET=1, for tests); use "
                           "kernel='auto' or 'two_call'")
    batch = q.shape[0]
    if active is not None and (active.shape != (batch,) or active.dtype != torch.bool):
        raise ValueError(f"fused kernel: active must be bool [{batch}], got "
                         f"{active.dtype} {tuple(active.shape)}")
    if active is not None and active.device != q.device:
        raise ValueError(f"fused kernel: active is on {active.device}, q on {q.device}")


def fused_skew_circulation(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, alpha, beta, *,
    norm_match: bool = True, active: torch.Tensor | None = None,
    config: LaunchConfig | None = None, fallback: bool = False,
    alpha_hint: float | None = None,
) -> torch.Tensor:
    """Blended, norm-matched output [B, H, L, d] (q's dtype; in eager calls q's memory layout)
    for q, k, v of shape [B, H, L, d] with any strides. ``alpha``/``beta``: numbers, or
    tensors of B or 1 values (e.g. [B, 1, 1, 1]) on q's device. ``active``: optional bool
    [B] on q's device; the other samples get the plain attention output, computed in the
    same launch at half the cost, so steering the cond half of a CFG batch needs no call of
    the host's attention at all.
    ``alpha_hint``: for a tensor ``alpha``, the user's alpha it derives from (the side of 1
    it lies on picks how the kernel accumulates, see ``accumulation_form``; without one, the
    form that suits every alpha, if not best).
    ``config`` overrides the tile sizes (tests, sweeps). ``fallback``: a kernel that fails to
    compile or launch here gives the two-call result instead, with one warning, and is not
    tried again in this process (what ``kernel="auto"`` wants).

    Runs as the registered op ``torch.ops.hopfield_circulation.fused_skew_circulation``, so
    torch.compile treats it as one opaque op and never re-traces the Triton code.
    """
    _check(q, k, v, active)
    batch = q.shape[0]
    alpha_t, alpha_value = _coefficient(alpha, batch, "alpha")
    if alpha_t is not None:  # the kernel reads alpha_t; alpha_value only picks the form
        alpha_value = float("nan") if alpha_hint is None else float(alpha_hint)
    beta_t, beta_value = _coefficient(beta, batch, "beta")
    for name, t in (("alpha", alpha_t), ("beta", beta_t)):
        if t is not None and t.device != q.device:
            raise ValueError(f"fused kernel: {name} is on {t.device}, q on {q.device}")
    tiles = (config.block_m, config.block_n, config.num_warps, config.num_stages) if config \
        else (0, 0, 0, 0)  # zeros: fused_tiles.tuned_config picks them
    arguments = (q, k, v, alpha_t, beta_t, alpha_value, beta_value, active, norm_match, *tiles,
                 fallback)
    # A torch.compile trace needs the registered op (whose output is contiguous, as its fake
    # says). Eager calls skip the dispatcher's round trip into Python (host time in every
    # steered call) and get their output in q's memory layout (see _launch).
    if torch.compiler.is_compiling():
        return FUSED_OP(*arguments)
    return _fused_op_impl(*arguments, like_q=True)


MAX_ETA_LANES = 1024  # eta values one adaptive launch averages in-kernel (heads, or B x H)


@dataclass(frozen=True)
class AdaptiveInputs:
    """What the kernel needs to derive alpha_eff and beta_eff itself (adaptive mode, eager):
    eta_M [B, H] fp32 (contiguous) and where to record eta-bar, alpha_eff, beta_eff
    ([3, B], or [3, 1] with one eta-bar per call)."""

    eta: torch.Tensor
    coefficients: torch.Tensor
    per_sample: bool


def _launch(q, k, v, alpha_t, beta_t, alpha_value, beta_value, active, norm_match,
            cfg: LaunchConfig, adaptive: AdaptiveInputs | None = None,
            like_q: bool = False) -> torch.Tensor:
    # The interpreter rounds fp32 -> bf16 by truncation (the GPU rounds to nearest even), which
    # would double the output's rounding error: there the kernel writes fp32 and torch rounds.
    emulate_bf16 = facts().interpreting and q.dtype == torch.bfloat16
    # ``like_q`` (eager calls): in q's memory layout, the host's [B, L, H, d] when q is a view
    # of it, so that handing the output back in the host's layout is a view instead of a copy
    # of the whole output. Else contiguous [B, H, L, d], as the registered op's fake promises.
    out_dtype = torch.float32 if emulate_bf16 else q.dtype
    out = torch.empty_like(q, dtype=out_dtype) if like_q else torch.empty(
        q.shape, dtype=out_dtype, device=q.device)
    grid, args, constexprs = launch_arguments(q, k, v, out, alpha_t, beta_t, alpha_value,
                                              beta_value, active, norm_match, cfg, adaptive)
    _launcher()[grid](*args, **constexprs)
    return out.to(q.dtype) if emulate_bf16 else out


def launch_arguments(q, k, v, out, alpha_t, beta_t, alpha_value, beta_value, active,
                     norm_match, cfg: LaunchConfig, adaptive: AdaptiveInputs | None = None):
    """(grid, arguments, constexprs) of one launch writing ``out`` (fused_plan.py replays
    them). The first FUSED_TENSOR_ARGS arguments are tensors, ``out`` standing in for those
    a launch does not read."""
    batch, heads, length, d = q.shape
    if active is not None:
        active = active.contiguous().view(torch.uint8)
    pv_fp16 = q.dtype == torch.bfloat16
    copies_v = v16_copy(q)
    v16 = v_in_fp16(v) if copies_v else out
    grid = (-(-length // cfg.block_m), batch * heads)  # plain ints: triton.cdiv costs more
    # Only adaptive launches see the batch size and an eta block: others pass constants, so
    # that a new batch size or head count compiles nothing new (ints are specialised on).
    eta_block = 1 if adaptive is None else 1 << (
        (heads if adaptive.per_sample else batch * heads) - 1).bit_length()
    difference, anchor_pert = accumulation_form(alpha_value)
    args = (
        q, k, v, out, alpha_t if alpha_t is not None else out,
        beta_t if beta_t is not None else out, v16, active if active is not None else out,
        adaptive.eta if adaptive else out, adaptive.coefficients if adaptive else out,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        _stride(alpha_t), _stride(beta_t), alpha_value, beta_value,
        batch if adaptive else 0, heads, length, d**-0.5 * LOG2E,
    )
    constexprs = dict(
        D=d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        ALPHA_PER_SAMPLE=alpha_t is not None, BETA_PER_SAMPLE=beta_t is not None,
        NORM_MATCH=norm_match, PV_FP16=pv_fp16, HAS_ACTIVE=active is not None,
        UPCAST=out.dtype != q.dtype,  # the interpreter's bf16 (see _launch)
        PRECISION=FP32_DOT_PRECISION if q.dtype == torch.float32 else "tf32",  # else ignored
        ADAPTIVE=adaptive is not None,
        ETA_PER_SAMPLE=adaptive is None or adaptive.per_sample,
        ETA_BLOCK=eta_block,
        DIFFERENCE=difference, ANCHOR_PERT=anchor_pert,
        # a number alpha > -1 (c1 > 0) moves c1 into the perturbed logits' scale; adaptive and
        # per-sample alphas may fall anywhere
        FOLD_C1=adaptive is None and alpha_t is None and alpha_value > -1.0,
        V16_COPY=copies_v,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return grid, args, constexprs


def v16_copy(q: torch.Tensor) -> bool:
    """Whether a launch on q reads V converted to fp16 before it (bf16): every program would
    otherwise convert each V tile it streams in its key loop, and pass it through shared
    memory behind a barrier for the tensor cores, once per query tile; one pass over V
    (reading 2 and writing 2 bytes per value) replaces that. Values beyond fp16's range
    become inf there, which the kernel detects and reruns from V itself."""
    return q.dtype == torch.bfloat16


def v_in_fp16(v: torch.Tensor) -> torch.Tensor:
    """v [B, H, L, d] in fp16, contiguous (the kernel derives its strides): one launch."""
    return v.to(torch.float16, memory_format=torch.contiguous_format)


def _stride(t: torch.Tensor | None) -> int:
    return 0 if t is None or t.numel() == 1 else t.stride(0)


def _fallback(q, k, v, alpha_t, beta_t, alpha_value, beta_value, active, norm_match):
    """What the kernel computes, by the two-call path (after the kernel failed here)."""
    from .two_call import two_call

    def coefficient(t, value):
        return value if t is None else t.reshape(-1, 1, 1, 1)

    base = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    out = two_call(q, k, v, base, coefficient(alpha_t, alpha_value),
                   coefficient(beta_t, beta_value), norm_match, out_dtype=q.dtype)
    return out if active is None else torch.where(active.reshape(-1, 1, 1, 1), out, base)


def _fused_op_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   alpha_t: torch.Tensor | None, beta_t: torch.Tensor | None, alpha_value: float,
                   beta_value: float, active: torch.Tensor | None, norm_match: bool,
                   block_m: int, block_n: int, num_warps: int, num_stages: int,
                   fallback: bool, like_q: bool = False) -> torch.Tensor:
    coefficients = (alpha_t, beta_t, alpha_value, beta_value, active, norm_match)
    config = LaunchConfig(block_m, block_n, num_warps, num_stages) if block_m else None
    return _run(q, lambda tiles: _launch(q, k, v, *coefficients, tiles, like_q=like_q), config,
                fallback, lambda: _fallback(q, k, v, *coefficients))


def _run(q, launch, config: LaunchConfig | None, fallback: bool, two_call):
    """``launch(config)`` with the given or the tuned tiles; with ``fallback``, a compile or
    launch failure warns once and gives ``two_call()`` now and for the rest of the process."""
    if fallback and _DISABLED:  # failed before in this process: not tried again
        return two_call()
    try:
        return launch(config) if config else fused_tiles.launch_fitting(q, launch, facts())
    except Exception as error:  # any compile or launch failure; reported once, not retried
        if not fallback:
            raise
        disable_auto(f"{type(error).__name__}: {error}")
        warnings.warn(f"Hopfield Circulation: the fused Triton kernel failed here ({error!r}); "
                      "using the two-call path from now on", RuntimeWarning, stacklevel=3)
        return two_call()


def fused_adaptive_circulation(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eta: torch.Tensor, alpha: float,
    beta: float, *, per_sample: bool = True, norm_match: bool = True,
    active: torch.Tensor | None = None, config: LaunchConfig | None = None,
    fallback: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive Circulation in one launch once eta_M is known: the kernel takes eta [B, H]
    (fp32, q's device) and derives eta-bar (per sample, or one per call), alpha_eff and
    beta_eff itself (eq. 37-41), instead of two more launches for them. Returns the output
    (as ``fused_skew_circulation``) and the coefficients it applied, [3, B] or [3, 1]:
    eta-bar, alpha_eff, beta_eff. Eager calls only: a compile trace computes the coefficients
    with torch ops and calls the registered op."""
    _check(q, k, v, active)
    batch, heads = q.shape[:2]
    if eta.shape != (batch, heads) or eta.dtype != torch.float32 or eta.device != q.device:
        raise ValueError(f"fused kernel: eta must be fp32 [{batch}, {heads}] on {q.device}, got "
                         f"{eta.dtype} {tuple(eta.shape)} on {eta.device}")
    if (heads if per_sample else batch * heads) > MAX_ETA_LANES:
        # The kernel reads the eta it averages in one block of lanes: beyond that, torch ops.
        from .symmetry import adaptive_coefficients, aggregate_eta

        eta_bar = aggregate_eta(eta, per_sample)
        alpha_eff, beta_eff = adaptive_coefficients(alpha, beta, eta_bar)
        out = fused_skew_circulation(q, k, v, alpha_eff, beta_eff, norm_match=norm_match,
                                     active=active, config=config, fallback=fallback,
                                     alpha_hint=alpha)
        return out, torch.stack((eta_bar, alpha_eff, beta_eff))
    adaptive = AdaptiveInputs(eta.contiguous(), torch.empty(
        3, batch if per_sample else 1, dtype=torch.float32, device=q.device), per_sample)
    coefficients = (None, None, float(alpha), float(beta), active, norm_match)

    def two_call():
        from .symmetry import adaptive_coefficients, aggregate_eta

        eta_bar = aggregate_eta(adaptive.eta, per_sample)
        alpha_eff, beta_eff = adaptive_coefficients(alpha, beta, eta_bar)
        adaptive.coefficients.copy_(torch.stack((eta_bar, alpha_eff, beta_eff)))
        return _fallback(q, k, v, alpha_eff, beta_eff, 0.0, 0.0, active, norm_match)

    out = _run(q, lambda tiles: _launch(q, k, v, *coefficients, tiles, adaptive, like_q=True),
               config, fallback, two_call)
    return out, adaptive.coefficients


def _fused_op_fake(q, k, v, *args):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


# The kernel as one torch op (hopfield/torch_ops.py): what a compile trace calls
FUSED_OP = torch_ops.register(
    "fused_skew_circulation",
    "(Tensor q, Tensor k, Tensor v, Tensor? alpha_t, Tensor? beta_t, float alpha_value, "
    "float beta_value, Tensor? active, bool norm_match, int block_m, int block_n, "
    "int num_warps, int num_stages, bool fallback) -> Tensor",
    _fused_op_impl, _fused_op_fake)
