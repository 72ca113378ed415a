"""A steered call's fused launch, prepared once per call layout.

The steered calls of a sampling run repeat a few layouts: one per UNet level or DiT width and
CFG batch, each with the same shapes, strides, dtype, device and settings. The general path
(``fused_skew_circulation``) checks and derives all of that again in every call: eligibility,
the tiles, the launch's 49 arguments and the cached launcher's key, about half of the host
time a steered call costs (``benchmarks/bench_host_overhead.py --stub-kernels``). A
``SkewPlan`` keeps what one general launch of a layout found (the compiled kernel and every
argument that is not one of the call's own tensors) and afterwards launches it with the new
call's tensors only: a fresh output, the current stream, and the 16-byte address checks that
Triton specialises on.

A plan steps aside (``run`` returns None, the caller takes the general path) whenever the
general path could launch differently: a profiler's launch hook, another current device, an
address off 16 bytes, a kernel that failed in this process, a launcher that refused.
``tests/core/test_fused_plan.py`` checks, with a recording stand-in for the compiled kernel,
that a plan's launch equals the general path's argument for argument.
"""

from __future__ import annotations

import torch

from . import fused_triton
from .triton_launch import CachedLauncher, hook_set

# Layouts kept per patched model: a session that visits many resolutions makes a few per
# resolution; past this the plans start afresh.
MAX_PLANS = 256


class SkewPlan:
    """One layout's launch of the fused kernel with static alpha and beta."""

    __slots__ = ("launcher", "compiled", "grid", "tail", "device", "pv_fp16")

    def __init__(self, launcher: CachedLauncher, compiled, grid: tuple, tail: tuple,
                 device: int, pv_fp16: bool):
        self.launcher, self.compiled, self.grid, self.tail = launcher, compiled, grid, tail
        self.device, self.pv_fp16 = device, pv_fp16

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            active: torch.Tensor | None) -> torch.Tensor | None:
        """The steered output [B, H, L, d] in q's memory layout, as the general path gives it,
        or None where that path must run instead (nothing launched then)."""
        launcher = self.launcher
        hooks = launcher.hooks
        if not launcher.enabled or fused_triton.disabled() or hook_set(
                hooks.launch_enter_hook) or hook_set(hooks.launch_exit_hook):
            return None
        device = self.device
        if device >= 0 and device != torch.cuda.current_device():
            return None
        if active is not None and not active.is_contiguous():
            return None
        out = torch.empty_like(q)
        v_max = torch.linalg.vector_norm(v, ord=float("inf"), dim=(-2, -1)) \
            if self.pv_fp16 else out
        rows = out if active is None else active.view(torch.uint8)
        if (q.data_ptr() | k.data_ptr() | v.data_ptr() | out.data_ptr() | v_max.data_ptr()
                | rows.data_ptr()) & 15:
            return None  # planned for 16-byte aligned tensors only
        compiled = self.compiled
        grid = self.grid
        try:
            compiled.run(grid[0], grid[1], 1, launcher.stream(device), compiled.function,
                         compiled.packed_metadata, None, None, None,
                         q, k, v, out, out, out, v_max, rows, out, out, *self.tail)
        except (TypeError, ValueError, SystemError, AttributeError) as error:
            launcher.refused(error)  # nothing ran: the general path from now on
            return None
        return out


def make_skew_plan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, alpha: float,
                   beta: float, norm_match: bool, active: torch.Tensor | None) -> SkewPlan | None:
    """The plan of this call's layout, right after a general launch of it (which compiled the
    kernel and timed the tiles), or None where there is none to make: not the cached launcher
    (the interpreter), an address off 16 bytes, tiles not settled yet."""
    launcher = fused_triton._launcher()
    if not isinstance(launcher, CachedLauncher) or not launcher.enabled \
            or fused_triton.disabled():
        return None
    if fused_triton.facts().interpreting and q.dtype == torch.bfloat16:
        return None  # the interpreter's bf16 writes fp32 (fused_triton._launch)
    if active is not None and (not active.is_contiguous() or active.dtype != torch.bool):
        return None
    cfg = fused_triton.settled_config(q)
    if cfg is None:
        return None
    out = torch.empty_like(q)
    grid, args, constexprs = fused_triton.launch_arguments(
        q, k, v, out, None, None, float(alpha), float(beta), active, norm_match, cfg)
    tensors = args[:fused_triton.FUSED_TENSOR_ARGS]
    if any(t.data_ptr() & 15 for t in tensors):
        return None
    found = launcher.entry(args, constexprs)
    if found is None:
        return None
    compiled, constants = found
    device = q.get_device()
    return SkewPlan(launcher, compiled, (grid[0], grid[1]),
                    (*args[fused_triton.FUSED_TENSOR_ARGS:], *constants), device,
                    q.dtype == torch.bfloat16)


class SkewPlans:
    """The plans of one patched model, by call layout (q, k, v shapes and strides, dtype,
    device and the CFG chunk labels, which decide the steered rows), each with what its
    caller keeps beside it (``extra``: what it hands back with the output)."""

    def __init__(self, alpha: float, beta: float, norm_match: bool):
        self.alpha, self.beta, self.norm_match = alpha, beta, norm_match
        self.plans: dict[tuple, tuple[SkewPlan, object] | None] = {}

    @staticmethod
    def layout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, labels: list) -> tuple:
        return (q.shape, q.stride(), k.stride(), v.stride(), q.dtype, q.get_device(),
                tuple(labels))

    def get(self, layout: tuple) -> tuple[SkewPlan, object] | None:
        return self.plans.get(layout)

    def learn(self, layout: tuple, q, k, v, active, extra=None) -> None:
        """After a general fused launch of ``layout``: plan it (or note that it has none)."""
        if layout in self.plans:
            return
        if len(self.plans) >= MAX_PLANS:
            self.plans.clear()
        plan = make_skew_plan(q, k, v, self.alpha, self.beta, self.norm_match, active)
        self.plans[layout] = None if plan is None else (plan, extra)
