"""A steered call's kernel launches, prepared once per call layout.

The steered calls of a sampling run repeat a few layouts: one per UNet level or DiT width and
CFG batch, each with the same shapes, strides, dtype, device and settings. The general path
(``fused_skew_circulation``, ``fused_adaptive_circulation``) checks and derives all of that
again in every call: eligibility, the tiles, each launch's arguments (49 for the fused kernel)
and the cached launcher's key, about half of the host time a steered call costs
(``benchmarks/bench_host_overhead.py --stub-kernels``). A plan keeps what one general call of a
layout launched (the compiled kernels and every argument that is not one of the call's own
tensors) and afterwards launches them with the new call's tensors only: fresh outputs, the
current stream, and the 16-byte address checks that Triton specialises on.

A plan hands the compiled launcher each tensor as its address, an int, which the launcher
takes as it is. Given a tensor, it calls the tensor's ``data_ptr`` and asks the driver about
the pointer (``cuPointerGetAttribute``), for every pointer argument (ten of the fused kernel's)
in every launch. The driver's check has nothing to catch here: a layout's plan is only found by
tensors of the devices it was planned on (its layout holds them), at addresses checked here.

A plan steps aside (``run`` returns None and launches nothing; the caller takes the general
path) wherever that path could launch differently: a profiler's launch hook, another current
device, an address off 16 bytes, a kernel that failed in this process, a launcher that refused.
``tests/core/test_fused_plan.py`` checks, with a recording stand-in for the compiled kernels,
that a plan launches what the general path launches, argument for argument.
"""

from __future__ import annotations

import torch

from . import eta_triton, fused_triton
from .triton_launch import CachedLauncher, hook_set

# Layouts kept per patched model: a session that visits many resolutions makes a few per
# resolution; past this the plans start afresh.
MAX_PLANS = 256


class PreparedLaunch:
    """One kernel launch of one layout: its compiled kernel, grid and every argument after
    the tensors (constexprs included), as the cached launcher would pass them."""

    __slots__ = ("launcher", "compiled", "grid", "tail")

    def __init__(self, launcher: CachedLauncher, compiled, grid: tuple, tail: tuple):
        self.launcher, self.compiled, self.grid, self.tail = launcher, compiled, grid, tail

    def ready(self) -> bool:
        """The cached launcher would launch it now: enabled, no profiler's hook."""
        launcher = self.launcher
        hooks = launcher.hooks
        return launcher.enabled and not hook_set(hooks.launch_enter_hook) \
            and not hook_set(hooks.launch_exit_hook)

    def __call__(self, device: int, *addresses) -> bool:
        """Launch with the call's tensors given by their addresses (ints: 16-byte aligned, on
        the planned devices); False where the compiled launcher refused them (it parses its
        arguments first: nothing ran)."""
        return self.on_stream(self.launcher.stream(device), addresses)

    def on_stream(self, stream, addresses) -> bool:
        """``self(device, *addresses)`` on ``stream``, that device's current one (a plan of
        several launches looks it up once). Tensors would do too (a benchmark compares)."""
        compiled, grid = self.compiled, self.grid
        try:
            compiled.run(grid[0], grid[1], grid[2], stream, compiled.function,
                         compiled.packed_metadata, None, None, None, *addresses, *self.tail)
        except (TypeError, ValueError, SystemError, AttributeError) as error:
            self.launcher.refused(error)  # Triton's own path from now on
            return False
        return True


def prepare(launcher, grid: tuple, args: tuple, constexprs: dict,
            tensors: int) -> PreparedLaunch | None:
    """The launch of ``args`` once it has run through ``launcher`` (the cached launcher holds
    its compiled kernel), or None: another launcher (the interpreter's kernel itself), an
    address off 16 bytes, nothing launched yet."""
    if not isinstance(launcher, CachedLauncher) or not launcher.enabled:
        return None
    if not aligned(*args[:tensors]):
        return None
    found = launcher.entry(args, constexprs)
    if found is None:
        return None
    compiled, constants = found
    return PreparedLaunch(launcher, compiled, (*grid, 1, 1)[:3], (*args[tensors:], *constants))


def launchable(device: int, active: torch.Tensor | None, *launches: PreparedLaunch) -> bool:
    """A plan's launches would go as planned now: their launchers ready, no kernel failed,
    the tensors' device current, the steered rows as the kernel reads them."""
    for launch in launches:  # a loop, not all() over a generator: host time in every call
        if not launch.ready():
            return False
    return not fused_triton.disabled() \
        and (device < 0 or device == torch.cuda.current_device()) \
        and (active is None or active.is_contiguous())


def aligned(*tensors) -> bool:
    return aligned_addresses(*(t.data_ptr() for t in tensors))


def aligned_addresses(*addresses: int) -> bool:
    joined = 0
    for address in addresses:
        joined |= address
    return not joined & 15


class OutputLayout:
    """Where a plan's launch writes its output: the general path's [B, H, L, d] output as the
    caller hands it on (``to_host``, a view of it: the host's own layout), allocated as such."""

    __slots__ = ("shape", "stride")

    def __init__(self, shape, stride):
        self.shape, self.stride = shape, stride

    @staticmethod
    def of(q: torch.Tensor, to_host) -> OutputLayout | None:
        """The layout of ``to_host(torch.empty_like(q))``; None where that is a copy."""
        out = torch.empty_like(q)
        handed = to_host(out)
        if handed.data_ptr() != out.data_ptr() or handed.dtype != out.dtype:
            return None
        return OutputLayout(tuple(handed.shape), handed.stride())

    def new(self, like: torch.Tensor) -> torch.Tensor:
        return torch.empty_strided(self.shape, self.stride, dtype=like.dtype, device=like.device)


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _fused_operands(plan, q, k, v, active, v_heads) -> tuple | None:
    """(output, v in fp16, addresses) of one planned fused launch, or None where an address
    is off 16 bytes (planned for aligned tensors only). The output is laid out as planned;
    v's fp16 copy is made only where the kernel reads it (bf16); the addresses are q, k, v,
    the output, v's copy and the steered rows (a bool is the byte the kernel reads), the
    output's standing in for those a launch does not read."""
    out = plan.output.new(q)
    o = out.data_ptr()
    if plan.v16:
        v16 = fused_triton.v_in_fp16(v if v_heads is None else v_heads)
        v16_at = v16.data_ptr()
    else:
        v16, v16_at = out, o
    rows = o if active is None else active.data_ptr()
    at = q.data_ptr(), k.data_ptr(), v.data_ptr(), o, v16_at, rows
    # aligned_addresses, written out: in every steered call, its call would cost more than
    # the check
    if (at[0] | at[1] | at[2] | o | v16_at | rows) & 15:
        return None
    # v16 goes back with them: its block must not go to another tensor before the launch
    return out, v16, at


class SkewPlan:
    """Static alpha and beta: one fused launch."""

    __slots__ = ("fused", "device", "v16", "output")

    def __init__(self, fused: PreparedLaunch, device: int, v16: bool, output: OutputLayout):
        self.fused, self.device, self.v16, self.output = fused, device, v16, output

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            active: torch.Tensor | None, v_heads: torch.Tensor | None = None
            ) -> torch.Tensor | None:
        """The steered output, as the general path's and handed on as its caller's
        ``to_host`` does, or None where that path must run instead (nothing launched then).
        q, k, v: the planned call's tensors, [B, H, L, d] or the host's own (the launch reads
        addresses; the layout is planned). ``v_heads``: v as [B, H, L, d], where ``v16`` (the
        launch reads its fp16 copy)."""
        fused, device = self.fused, self.device
        if not launchable(device, active, fused):
            return None
        operands = _fused_operands(self, q, k, v, active, v_heads)
        if operands is None:
            return None
        out, _, (q_at, k_at, v_at, o, v16_at, rows) = operands
        if not fused(device, q_at, k_at, v_at, o, o, o, v16_at, rows, o, o):
            return None
        return out


class AdaptivePlan:
    """Adaptive settings: the eta kernel's launches (one, or the chunks' Grams and their
    reduction: eta_triton.py), then the fused kernel's, which derives alpha_eff and beta_eff
    from eta itself (fused_triton.fused_adaptive_circulation). What they write besides the
    output shares one fp32 allocation per call (``scratch``): the coefficients [3, C] the
    fused kernel records (eta-bar, alpha_eff, beta_eff; C = B per sample, else 1), then eta
    [B, H], then the eta chunks' Grams where its tokens are split; each part starts at a
    multiple of 16 bytes."""

    __slots__ = ("eta", "fused", "device", "v16", "output", "columns", "eta_at", "work_at",
                 "size")

    def __init__(self, eta: list, fused: PreparedLaunch, device: int, v16: bool,
                 eta_shape: tuple[int, int], work: int, columns: int, output: OutputLayout):
        self.eta, self.fused, self.device = eta, fused, device  # eta: [(stage, launch)]
        self.v16, self.output, self.columns = v16, output, columns
        self.eta_at = _whole_units(3 * columns)  # in floats
        self.work_at = self.eta_at + _whole_units(eta_shape[0] * eta_shape[1])
        self.size = self.work_at + work

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            active: torch.Tensor | None, v_heads: torch.Tensor | None = None) -> tuple | None:
        """(output, scratch) with the general path's values: the output as ``SkewPlan.run``'s,
        and the call's scratch, whose coefficients ``coefficient_rows`` views where they are
        read; or None where that path must run instead."""
        eta_launches, fused, device = self.eta, self.fused, self.device
        if not launchable(device, active, fused, *(launch for _, launch in eta_launches)) \
                or eta_triton.failed():
            return None
        operands = _fused_operands(self, q, k, v, active, v_heads)
        if operands is None:
            return None
        out, _, (q_at, k_at, v_at, o, v16_at, rows) = operands
        scratch = torch.empty(self.size, dtype=torch.float32, device=out.device)
        coefficients = scratch.data_ptr()
        if coefficients & 15:  # its parts are whole 16-byte units apart
            return None
        eta = coefficients + 4 * self.eta_at
        work = coefficients + 4 * self.work_at if self.size > self.work_at else eta
        for stage, launch in eta_launches:
            if not launch(device, *eta_triton.stage_tensors(stage, q_at, k_at, eta, work)):
                return None
        if not fused(device, q_at, k_at, v_at, o, o, o, v16_at, rows, eta, coefficients):
            return None
        return out, scratch

    def coefficient_rows(self, scratch: torch.Tensor) -> tuple:
        """(eta-bar, alpha_eff, beta_eff), each [B|1, 1, 1, 1], of a call's ``scratch``:
        views, made only where something reads them (an observer), since every view costs a
        steered call host time."""
        return scratch[:3 * self.columns].view(3, self.columns, 1, 1, 1).unbind(0)


def _whole_units(floats: int) -> int:
    """``floats`` rounded up to whole 16-byte units (4 floats)."""
    return -(-floats // 4) * 4


def make_skew_plan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, alpha: float,
                   beta: float, norm_match: bool, active: torch.Tensor | None,
                   to_host=_identity) -> SkewPlan | None:
    """The plan of this call's layout (q, k, v [B, H, L, d]), right after a general launch of
    it (which compiled the kernel and timed the tiles), or None where there is none to make.
    ``to_host``: how the caller hands the general path's output on (a view of it)."""
    cfg = _plannable(q, active)
    output = OutputLayout.of(q, to_host)
    if cfg is None or output is None:
        return None
    out = torch.empty_like(q)
    grid, args, constexprs = fused_triton.launch_arguments(
        q, k, v, out, None, None, float(alpha), float(beta), active, norm_match, cfg)
    fused = prepare(fused_triton._launcher(), grid, args, constexprs,
                    fused_triton.FUSED_TENSOR_ARGS)
    return None if fused is None else SkewPlan(fused, q.get_device(),
                                               fused_triton.v16_copy(q), output)


def make_adaptive_plan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, alpha: float,
                       beta: float, per_sample: bool, norm_match: bool,
                       active: torch.Tensor | None, to_host=_identity) -> AdaptivePlan | None:
    """Likewise for Adaptive Circulation, after a general call that took the eta kernel and
    the fused kernel's adaptive launch (not the torch paths either hands over to)."""
    cfg = _plannable(q, active)
    output = OutputLayout.of(q, to_host)
    batch, heads = q.shape[:2]
    lanes = heads if per_sample else batch * heads
    if cfg is None or output is None or eta_triton.failed() \
            or lanes > fused_triton.MAX_ETA_LANES:
        return None
    eta = torch.empty(batch, heads, dtype=torch.float32, device=q.device)
    size = eta_triton.workspace_size(q)
    work = torch.empty(size, dtype=torch.float32, device=q.device) if size else eta
    eta_launches = [(stage, prepare(eta_triton.launcher_for(stage), grid, args, constexprs,
                                    eta_triton.tensor_args(stage)))
                    for stage, grid, args, constexprs in eta_triton.launch_arguments(
                        q, k, eta, work)]
    adaptive = fused_triton.AdaptiveInputs(eta, torch.empty(
        3, batch if per_sample else 1, dtype=torch.float32, device=q.device), per_sample)
    grid, args, constexprs = fused_triton.launch_arguments(
        q, k, v, torch.empty_like(q), None, None, float(alpha), float(beta), active,
        norm_match, cfg, adaptive)
    fused = prepare(fused_triton._launcher(), grid, args, constexprs,
                    fused_triton.FUSED_TENSOR_ARGS)
    if fused is None or any(launch is None for _, launch in eta_launches):
        return None
    return AdaptivePlan(eta_launches, fused, q.get_device(), fused_triton.v16_copy(q),
                        (batch, heads), size, adaptive.coefficients.shape[1], output)


def _plannable(q: torch.Tensor, active: torch.Tensor | None):
    """The tiles a plan of q's layout launches with, or None where no plan is made: a kernel
    failed here, the interpreter's bf16 (it writes fp32, fused_triton._launch), rows not as
    the kernel reads them, tiles not timed yet."""
    if fused_triton.disabled() or (fused_triton.facts().interpreting
                                   and q.dtype == torch.bfloat16):
        return None
    if active is not None and (not active.is_contiguous() or active.dtype != torch.bool):
        return None
    return fused_triton.settled_config(q)


class LayoutPlans:
    """The plans of one patched model, by call layout (the shapes and strides of the tensors
    a call hands over, dtype, their devices and whatever else the caller's views and rows
    depend on: ``extra``), each with what its caller keeps beside it.
    ``make(q, k, v, active, to_host)`` makes one, or None."""

    def __init__(self, make):
        self.make = make
        self.plans: dict[tuple, tuple | None] = {}

    @staticmethod
    def layout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *extra) -> tuple:
        return (q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype,
                q.get_device(), k.get_device(), v.get_device(), *extra)

    def get(self, layout: tuple) -> tuple | None:
        """(plan, extra) of a planned layout, else None."""
        return self.plans.get(layout)

    def learn(self, layout: tuple, q, k, v, active, extra=None, to_host=_identity) -> None:
        """After a general fused call of ``layout`` (q, k, v [B, H, L, d]): plan it (or note
        that it has none)."""
        if layout in self.plans:
            return
        if len(self.plans) >= MAX_PLANS:
            self.plans.clear()
        plan = self.make(q, k, v, active, to_host)
        self.plans[layout] = None if plan is None else (plan, extra)
