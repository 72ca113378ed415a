"""The Stability Probe's measures of one attention call in four Triton launches.

``layer_stability`` (hopfield/stability.py) needs three batched products and some twenty-five
elementwise passes and reductions per probed call; in a launch-bound sampling step each costs
host time. Its sums over tokens are what make the work: every Gram matrix, the columns' means
and norms, the field's norms. One program per (sample, head) sweeping all the tokens itself
gives a call only batch x heads programs (20 at SDXL's 64 x 64 level, on a GPU with 132
processors): most of the chip idles while each program walks 4,096 tokens alone. So the tokens
are split into chunks (hopfield/token_chunks.py: about two programs per processor, none much
under 600 tokens), in four launches:

1. grams (per head, column block and chunk): the chunk's share of K^T xs, Q^T xs, the token
   sums of k, q, xs, xs^2 and, at d = 64, eta's K^T K, K^T Q, Q^T Q; xs = x - ref, ref a
   column's mean over 32 evenly spread tokens (so that centring cancels little), rounded to the
   model's dtype for the tensor cores, fp32 accumulation;
2. weights (per head and column block): the chunks' shares summed in a fixed order (the same
   bits every run), centred, and turned into the field's weights, shift, sum(lambda), |xc|^2
   and eta;
3. field (per head, column block and chunk): the field tile by tile, lambda per token, and the
   chunk's |h|^2 and count of lambda < 0 per column;
4. finish (per sample and 1,024 tokens): the lambda map summed over heads, and each sample's
   E, r, Align and eta.

Everything in between lives in one fp32 workspace; the call's output is one [B, 4 + L] tensor
(the measures, then the map). Same math as the torch path; its roundings differ only in that
the centring happens after the products (exact inputs, fp32 corrections) rather than before.

Used by ``layer_stability`` on CUDA (in a compile trace as one registered op, ``STABILITY_OP``)
when q, k and the retrieval share fp16 or bf16 with widths (d, m) of (64, 64) (SDXL's and SD3's
heads in the value basis, or a 64-channel input basis) or (128, 128) (Flux, Chroma, Qwen-Image:
eta then by its own kernel, one or two launches more); other calls keep the torch path. A
failure to compile or launch warns once and hands the rest of the process to the torch path. The
import is lazy.
"""

from __future__ import annotations

import math
import operator
import threading
from typing import NamedTuple

import torch

from . import eta_triton, fused_plan, fused_triton, torch_ops
from .token_chunks import token_chunks
from .triton_launch import launcher_of

STABILITY_DTYPES = (torch.float16, torch.bfloat16)
# (head dim d, feature width m) -> (tokens per tile, warps, pipeline stages), from
# benchmarks/compile_hopper.py --kernel stability. At d = 64 all five Grams fit one program's
# registers; at d = 128 (Flux, Chroma, Qwen-Image) the field's two do, for 64 columns per
# program, and eta comes from its own kernel (hopfield/eta_triton.py).
# 64 tokens per tile: the field's products then have 64 rows, the least Hopper's warpgroup
# tensor-core instructions take (with 32 the compiler falls back to the older ones).
STABILITY_CONFIGS = {(64, 64): (64, 8, 2), (128, 128): (64, 8, 2)}
M_BLOCK = 64  # retrieval columns per program: wider retrievals take several programs
REF_ROWS = 32  # tokens whose mean is a column's reference value
TOKEN_BLOCK = 1024  # lambda-map tokens per program of the last stage
STAGE_WARPS = 4  # the last two stages' light programs

# stage -> how many of its leading arguments are tensors (its cached launcher's key)
STAGE_TENSOR_ARGS = {"grams": 4, "weights": 1, "field": 4, "finish": 2}

_FAILED: list[str] = []
_KERNELS: dict = {}


def _kernel(stage: str):
    if not _KERNELS:
        from . import stability_triton_kernel as kernels

        _KERNELS.update(grams=kernels.stability_grams, weights=kernels.stability_weights,
                        field=kernels.stability_field, finish=kernels.stability_finish)
    return _KERNELS[stage]


# what launches each stage: Triton's bookkeeping once per specialisation (triton_launch.py)
_launchers = {stage: launcher_of(lambda stage=stage: _kernel(stage), tensors)
              for stage, tensors in STAGE_TENSOR_ARGS.items()}


def eligible(q: torch.Tensor, k: torch.Tensor, retrieval: torch.Tensor) -> bool:
    """Whether ``layer_stability`` takes the kernel: compiled Triton on CUDA, q, k and the
    retrieval of one half-precision dtype, widths in STABILITY_CONFIGS (in a compile trace as
    the registered op STABILITY_OP)."""
    return (
        q.is_cuda and q.dtype in STABILITY_DTYPES and q.ndim == 4 and q.shape == k.shape
        and retrieval.ndim == 4 and retrieval.shape[:3] == q.shape[:3]
        and (q.shape[-1], retrieval.shape[-1]) in STABILITY_CONFIGS
        and k.dtype == q.dtype == retrieval.dtype
        and k.device == q.device == retrieval.device
        and not _FAILED and fused_triton.kernel_usable()
        and fused_triton.tensor_core_dots(q.device)
    )


class Geometry(NamedTuple):
    """Everything about a call's launches that follows from its shapes, dtype and device."""

    batch: int
    heads: int
    length: int
    d: int
    m: int
    tiles: tuple[int, int, int]  # the sweeping stages' (tokens per tile, warps, stages)
    with_eta: bool
    blocks: int  # programs per head: blocks of M_BLOCK retrieval columns
    chunks: int
    chunk: int
    offsets: dict  # the workspace's regions (floats)
    work: int  # the workspace's size (floats)
    eta_work: int  # of which eta's kernels' own (d = 128, tokens split)

    @staticmethod
    def of(q, retrieval, config=None, splits=None) -> Geometry:
        batch, heads, length, d = q.shape
        m = retrieval.shape[-1]
        tiles = config or STABILITY_CONFIGS[(d, m)]
        blocks = m // M_BLOCK
        programs = batch * heads * blocks
        chunks, chunk = token_chunks(programs, length, tiles[0], q.device, splits)
        regions = [  # the workspace, in floats: stage 1's records, eta's Grams (d = 64),
            # stage 2's stats, stage 3's parts and lambda rows, eta per head
            ("records", programs * chunks * (2 * d * M_BLOCK + 2 * d + 3 * M_BLOCK)),
            ("eta_grams", batch * heads * chunks * 3 * d * d if d == 64 else 0),
            ("stats", programs * (2 * d * M_BLOCK + 4 * M_BLOCK)),
            ("field", programs * chunks * 2 * M_BLOCK),
            ("tokens", programs * length),
            ("eta", batch * heads),
            ("eta_work", 0 if d == 64 else eta_triton.workspace_size(q)),  # eta's own chunks
        ]
        offsets, at = {}, 0
        for name, size in regions:
            offsets[name] = at
            at += -(-size // 4) * 4  # whole 16-byte units: every region's address aligned
        return Geometry(batch, heads, length, d, m, tiles, d == 64, blocks, chunks, chunk,
                        offsets, at, regions[-1][1])

    def eta_tensors(self, work: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(eta [B, H], eta's own workspace) within ``work``, where eta's kernels write them
        (d = 128); unsplit, eta stands in for the unused workspace."""
        at = self.offsets["eta"]
        eta = work[at:at + self.batch * self.heads].view(self.batch, self.heads)
        return eta, work[self.offsets["eta_work"]:] if self.eta_work else eta

    def eta_addresses(self, work: int) -> tuple[int, int]:
        """``eta_tensors`` as addresses, for a workspace at address ``work`` (no views)."""
        eta = work + 4 * self.offsets["eta"]
        return eta, work + 4 * self.offsets["eta_work"] if self.eta_work else eta


def stage_tensors(stage: str, q, k, retrieval, work, out, eta: tuple) -> tuple:
    """The tensors a stage of launch_arguments takes first, in its order (ProbePlan replays
    a stage with a call's own tensors' addresses through this). ``eta``: where eta's kernels
    write (d = 128; ``Geometry.eta_tensors``)."""
    if stage in ("grams", "field"):
        return q, k, retrieval, work
    if stage == "weights":
        return (work,)
    if stage == "finish":
        return work, out
    return eta_triton.stage_tensors(stage[4:], q, k, *eta)  # "eta ..."


def launch_arguments(q, k, retrieval, work, out, g: Geometry) -> list:
    """[(stage, grid, arguments, constexprs)] of the call's launches, in order (the first
    STAGE_TENSOR_ARGS[stage] arguments are tensors; at d = 128 "eta index" and, with its tokens
    split, "eta reduce": eta_triton's launches, eta_triton.tensor_args)."""
    block_l, warps, stages = g.tiles
    at = g.offsets
    strides = (*q.stride(), *k.stride(), *retrieval.stride())
    common = dict(
        D=g.d, M_BLOCK=M_BLOCK,
        # The interpreter multiplies bf16 as raw integers (numpy has no bf16): upcast there.
        UPCAST=fused_triton.facts().interpreting and q.dtype == torch.bfloat16,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # else ignored
    )
    rows = g.batch * g.heads
    eta = () if g.with_eta else g.eta_tensors(work)  # eta by its own kernels (d = 128)

    def tensors(stage: str) -> tuple:
        return stage_tensors(stage, q, k, retrieval, work, out, eta)

    found = [
        ("grams", (rows, g.blocks, g.chunks),
         (*tensors("grams"), *strides, g.heads, g.length, g.chunk, at["eta_grams"]),
         dict(BLOCK_L=block_l, REF_ROWS=REF_ROWS, WITH_ETA=g.with_eta, **common,
              num_warps=warps, num_stages=stages)),
        ("weights", (rows, g.blocks),
         (*tensors("weights"), g.length, g.chunks, at["stats"], at["eta_grams"], at["eta"],
          0.5 / math.sqrt(g.d)),
         dict(D=g.d, M_BLOCK=M_BLOCK, WITH_ETA=g.with_eta, num_warps=warps, num_stages=1)),
    ]
    if not g.with_eta:  # eta by its own kernels, into the workspace's eta rows
        found += [(f"eta {stage}", grid, args, constexprs) for stage, grid, args, constexprs
                  in eta_triton.launch_arguments(q, k, *eta)]
    found += [
        ("field", (rows, g.blocks, g.chunks),
         (*tensors("field"), *strides, g.heads, g.length, g.chunk, at["stats"], at["field"],
          at["tokens"], 1.0 / (g.heads * g.m)),
         dict(BLOCK_L=block_l, **common, num_warps=warps, num_stages=stages)),
        ("finish", (g.batch, -(-g.length // TOKEN_BLOCK)),
         (*tensors("finish"), g.heads, g.length, g.chunks, at["stats"], at["field"],
          at["tokens"], at["eta"], out.stride(0), 1.0 / (g.heads * g.m)),
         dict(D=g.d, M_BLOCK=M_BLOCK, BLOCKS=g.blocks, TOKEN_BLOCK=TOKEN_BLOCK,
              num_warps=STAGE_WARPS, num_stages=1)),
    ]
    return found


def _launcher(stage: str):
    return eta_triton.launcher_for(stage[4:]) if stage.startswith("eta ") \
        else _launchers[stage]()


def _tensor_args(stage: str) -> int:
    return eta_triton.tensor_args(stage[4:]) if stage.startswith("eta ") \
        else STAGE_TENSOR_ARGS[stage]


# The addresses a planned call hands its launches, in this order (ProbePlan.orders)
PLANNED_ADDRESSES = ("q", "k", "retrieval", "work", "out", "eta", "eta_work")


class ProbePlan:
    """A call layout's launches prepared once (hopfield/fused_plan.py's ``prepare``): later
    calls of the layout launch the compiled kernels with only their own tensors (the inputs
    and the output) given by their addresses, without the geometry, the argument lists or the
    cached launcher's key.

    The workspace is the plan's own, one per thread and stream, kept from call to call: the
    launches of one stream run in order, so a call's stages never meet the next call's (two
    threads on one stream each have their own). Under CUDA graph capture each call takes a
    fresh one, as the general path does, from the graph's memory."""

    __slots__ = ("launches", "device", "torch_device", "geometry", "out_shape", "prepared",
                 "orders", "workspaces")

    def __init__(self, launches: list, device: torch.device, g: Geometry):
        self.launches, self.torch_device, self.geometry = launches, device, g
        self.device = device.index if device.type == "cuda" else -1  # as get_device() says
        self.out_shape = (g.batch, 4 + g.length)
        self.prepared = tuple(launch for _, launch in launches)
        # each launch with what picks its tensors' addresses out of PLANNED_ADDRESSES
        positions = range(len(PLANNED_ADDRESSES))
        self.orders = tuple(
            (launch, _picker(stage_tensors(stage, *positions[:5], tuple(positions[5:]))))
            for stage, launch in launches)
        self.workspaces: dict = {}  # (thread, stream) -> (workspace, its regions' addresses)

    def ready(self) -> bool:
        """The launches would go as planned now (fused_plan.launchable) and no probe kernel
        failed in this process."""
        return not _FAILED and fused_plan.launchable(self.device, None, *self.prepared)

    def run(self, q, k, retrieval):
        """The call's packed [B, 4 + L] result, or None where the general path must run (a
        launcher not ready, another current device, an address off 16 bytes, a refusal).
        q, k, retrieval: the planned call's tensors, as [B, H, L, d] views or as the host's
        own tensors they view (the launches read addresses; the layout is planned)."""
        return self.run_at(q.data_ptr(), k.data_ptr(), retrieval.data_ptr())

    def run_at(self, q: int, k: int, retrieval: int):
        """``run`` on the tensors at these addresses (laid out as planned)."""
        if not self.ready():
            return None
        out = torch.empty(self.out_shape, dtype=torch.float32, device=self.torch_device)
        return out if self.launch_into(q, k, retrieval, out.data_ptr()) else None

    def launch_into(self, q: int, k: int, retrieval: int, out: int) -> bool:
        """Launch on the tensors at these addresses, the result written at ``out`` ([B, 4 + L]
        fp32, contiguous), once ``ready`` said yes; False where nothing could launch (an
        address off 16 bytes, a refusal)."""
        if (q | k | retrieval | out) & 15:
            return False
        stream = self.prepared[0].launcher.stream(self.device)  # one driver: one stream
        fresh = self.device >= 0 and torch.cuda.is_current_stream_capturing()
        workspace = self._workspace(stream, fresh)
        work, eta, eta_work = workspace[1]
        addresses = (q, k, retrieval, work, out, eta, eta_work)
        for launch, pick in self.orders:
            if not launch.on_stream(stream, pick(addresses)):
                return False
        return True

    def _workspace(self, stream, fresh: bool) -> tuple:
        """(workspace, (its address, eta's, eta's own workspace's)) for this thread and
        stream; ``fresh``: one for this call only (a CUDA graph capture)."""
        key = (threading.get_ident(), stream)
        found = None if fresh else self.workspaces.get(key)
        if found is None:
            g = self.geometry
            work = torch.empty(g.work, dtype=torch.float32, device=self.torch_device)
            at = work.data_ptr()
            found = (work, (at, *(g.eta_addresses(at) if not g.with_eta else (at, at))))
            if not fresh:
                self.workspaces[key] = found
        return found


def _picker(positions: tuple[int, ...]):
    """What picks these positions of a tuple, as a tuple (one position included)."""
    if len(positions) == 1:
        return lambda values, at=positions[0]: (values[at],)
    return operator.itemgetter(*positions)


_plans: dict[tuple, ProbePlan | None] = {}  # call layout -> its plan (None: none to make)


def stability_triton(q: torch.Tensor, k: torch.Tensor, retrieval: torch.Tensor, *,
                     config: tuple[int, int, int] | None = None, splits: int | None = None):
    """(per sample [B, 4]: E, r, Align, eta, each averaged over heads and features; the lambda
    map [B, L]): ``stability_packed``'s two views."""
    out = stability_packed(q, k, retrieval, config=config, splits=splits)
    return out[:, :4], out[:, 4:]


def stability_packed(q: torch.Tensor, k: torch.Tensor, retrieval: torch.Tensor, *,
                     config: tuple[int, int, int] | None = None,
                     splits: int | None = None, plan_key: tuple | None = None) -> torch.Tensor:
    """One fresh [B, 4 + L] fp32 tensor: per sample E, r, Align, eta, each averaged over heads
    and features, then the lambda map, for q, k [B, H, L, d] and the retrieval [B, H, L, m],
    any strides (fp16/bf16 on CUDA; also fp32, and the CPU under Triton's interpreter, for
    tests). ``config``: (tokens per tile, warps, stages) of the two stages that sweep the
    tokens; ``splits``: how many chunks the tokens are split into (default:
    hopfield/token_chunks.py). A layout's first call takes the general path and plans the
    layout; its later calls launch the plan. ``plan_key``: the caller's own key for this
    call's layout (``host_layout``), under which the plan is kept too (``run_planned``)."""
    layout = (q.shape, q.stride(), k.stride(), retrieval.shape, retrieval.stride(), q.dtype,
              q.get_device(), k.get_device(), retrieval.get_device(), config, splits)
    plan = _plans.get(layout)
    if plan is not None:
        out = plan.run(q, k, retrieval)
        if out is not None:
            if plan_key is not None:
                _keep(plan_key, plan)
            return out
    g = Geometry.of(q, retrieval, config, splits)
    work = torch.empty(g.work, dtype=torch.float32, device=q.device)
    out = torch.empty(g.batch, 4 + g.length, dtype=torch.float32, device=q.device)
    launches = launch_arguments(q, k, retrieval, work, out, g)
    for stage, grid, args, constexprs in launches:
        _launcher(stage)[grid](*args, **constexprs)
    if layout not in _plans:
        _keep(layout, _make_plan(launches, q.device, g))
    if plan_key is not None and plan_key not in _plans:
        _keep(plan_key, _plans[layout])
    return out


def _keep(key: tuple, plan: ProbePlan | None) -> None:
    if len(_plans) >= fused_plan.MAX_PLANS:
        _plans.clear()
    _plans[key] = plan


def host_layout(q: torch.Tensor, k: torch.Tensor, retrieval: torch.Tensor, *views) -> tuple:
    """A key for a call's layout given as the tensors a caller holds (the host's, say) before
    viewing them as [B, H, L, d]: their shapes, strides, dtype and devices, and ``views``,
    whatever else decides the views (heads, the host's layout flags)."""
    return ("host", q.shape, q.stride(), k.shape, k.stride(), retrieval.shape,
            retrieval.stride(), q.dtype, q.device, k.get_device(), retrieval.get_device(),
            *views)


def rows_layout(rows: slice, q: torch.Tensor, k: torch.Tensor, retrieval: torch.Tensor,
                *views) -> tuple:
    """A key for the layout of ``q[rows]``, ``k[rows]``, ``retrieval[rows]`` (``rows``: start
    and stop within the first dimension, which keep every stride) without the slices, an op
    each: how many rows, and ``host_layout``'s of the whole tensors."""
    return ("rows", rows.stop - rows.start, host_layout(q, k, retrieval, *views))


def run_planned(key: tuple, q: torch.Tensor, k: torch.Tensor,
                retrieval: torch.Tensor) -> torch.Tensor | None:
    """``stability_packed``'s result for a layout planned under ``key`` (``plan_key``),
    launched on the caller's own tensors, which need no views: None where there is no plan
    (the caller then makes its views and calls ``layer_stability`` with that ``plan_key``)
    or it cannot launch now."""
    plan = _plans.get(key)
    return None if plan is None else plan.run(q, k, retrieval)


def run_planned_rows(key: tuple, rows: slice, q: torch.Tensor, k: torch.Tensor,
                     retrieval: torch.Tensor) -> torch.Tensor | None:
    """``run_planned(key, q[rows], k[rows], retrieval[rows])`` (``key``: ``rows_layout``'s),
    launched at the rows' addresses: no slices."""
    plan = _plans.get(key)
    if plan is None:
        return None
    return plan.run_at(*row_addresses(rows, q, k, retrieval))


def ready_plan(key: tuple) -> ProbePlan | None:
    """The plan kept under ``key`` (``host_layout``'s or ``rows_layout``'s), if it would
    launch as planned now (``ProbePlan.ready``): a caller with an output of its own to write
    into calls its ``launch_into``."""
    plan = _plans.get(key)
    return plan if plan is not None and plan.ready() else None


def row_addresses(rows: slice, q: torch.Tensor, k: torch.Tensor, retrieval: torch.Tensor,
                  addresses: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
    """The addresses of ``q[rows]``, ``k[rows]`` and ``retrieval[rows]`` (``rows``: start and
    stop within the first dimension), without the slices; ``addresses``: the whole tensors',
    where the caller has them."""
    qa, ka, ra = addresses or (q.data_ptr(), k.data_ptr(), retrieval.data_ptr())
    first = rows.start or 0
    return (qa + first * q.stride(0) * q.element_size(),
            ka + first * k.stride(0) * k.element_size(),
            ra + first * retrieval.stride(0) * retrieval.element_size())


def _make_plan(launches: list, device: torch.device, g: Geometry) -> ProbePlan | None:
    prepared = [(stage, fused_plan.prepare(_launcher(stage), grid, args, constexprs,
                                           _tensor_args(stage)))
                for stage, grid, args, constexprs in launches]
    if any(launch is None for _, launch in prepared):
        return None
    return ProbePlan(prepared, device, g)


def launchers() -> list:
    """Every stage's cached launcher (tests and benchmarks switch them together)."""
    return [launcher() for launcher in _launchers.values()]


def try_stability(q: torch.Tensor, k: torch.Tensor, retrieval: torch.Tensor,
                  plan_key: tuple | None = None):
    """``stability_packed``'s result, or None after it failed here (warned once; the caller
    takes the torch path, now and for the rest of the process)."""
    return fused_triton.first_failure_hands_over(
        "Stability Probe", _FAILED,
        lambda: stability_packed(q, k, retrieval, plan_key=plan_key))


def _op_impl(q: torch.Tensor, k: torch.Tensor, retrieval: torch.Tensor) -> torch.Tensor:
    """STABILITY_OP as a compiled graph runs it: the kernels' packed result, or the torch
    path's where they failed in this process (the graph was traced before it knew)."""
    packed = None if _FAILED else try_stability(q, k, retrieval)
    if packed is None:
        from .stability import layer_stability_torch

        packed = layer_stability_torch(q, k, retrieval).packed
    return packed


def _op_fake(q, k, retrieval):
    return q.new_empty((q.shape[0], 4 + q.shape[2]), dtype=torch.float32)


# The four launches as one torch op (hopfield/torch_ops.py): what a compile trace calls, where
# it would otherwise trace the torch path's products and passes
STABILITY_OP = torch_ops.register(
    "stability_packed", "(Tensor q, Tensor k, Tensor retrieval) -> Tensor", _op_impl, _op_fake)
