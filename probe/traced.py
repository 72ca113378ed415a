"""The Stability Probe inside a compiled graph (ComfyUI's TorchCompileModel).

The probe's measurement is tensor work: traced into the model's graph like any other op. Its
bookkeeping (which run, which model evaluation, the guidance re-runs to skip, the run's pending
list) is Python that must run at every call, not once when the graph is traced; a graph break
there split the model into a graph per probed call, recompiled per layer. So the traced code
ends each probed call with one opaque op that hands the measurement, and constants naming the
call, to ``_keep`` when the graph runs. Inductor keeps the op where it is: it declares a write
to a small tensor (hook/host_ops.SINK), so it is never dropped as dead code.

Where the model call stands (its id, its step) is not in the graph either: ``_keep`` asks the
step wrapper (hook/schedule.running_step), which runs outside the compiled model.
"""

from __future__ import annotations

import torch

from ..hook.call import AttentionCall, Steering
from ..hook.host_ops import SINK, register_python_op
from ..hook.schedule import running_step
from .registry import Measurement, chunk_placements, state_of

OP_SCHEMA = (
    "(Tensor[] packed, Tensor(a!) sink, str probe, int layer, str kind, str group, "
    "int[] branches, int[] chunks, int chunk_count, int[] grid, int text_tokens, int[] latent, "
    "str steering_space) -> ()"
)


def record_in_graph(probe_id: str, call: AttentionCall, steering: Steering | None,
                    wanted: list[tuple[int, int]], packed: list[torch.Tensor]) -> None:
    """In traced code: have ``_keep`` record ``packed`` each time the graph runs. ``wanted``:
    the call's chunks [(CFG branch, chunk)] the probe records; ``packed``: their measurement,
    one of the whole batch where they are all of it, else one per chunk (recorder.py)."""
    latent = call.latent_shape
    grid = call.token_grid if latent is not None else None  # maps need the latent's grid
    layer = call.layer
    _OP(packed, SINK, probe_id, layer.index, layer.kind, layer.group,
        [branch for branch, _ in wanted], [chunk for _, chunk in wanted],
        len(call.cond_or_uncond), list(grid or ()), call.text_tokens, list(latent or ()),
        steering.space if steering is not None else "")


def _keep(packed, sink, probe, layer, kind, group, branches, chunks, chunk_count, grid,
          text_tokens, latent, steering_space) -> None:
    """The op, when the graph runs: what the eager recorder does after measuring."""
    state = state_of(probe)
    run = state.current if state is not None else None
    if run is None:
        return
    step = running_step()
    wanted = list(zip(branches, chunks, strict=True))
    kept = run.sampler_chunks(step.model_call, wanted)
    if not kept:
        return
    if steering_space:
        run.steering_spaces.add(steering_space)
    if latent:
        run.latent_shape = tuple(latent)
    whole = len(wanted) == chunk_count  # one measurement of the whole batch
    batch = packed[0].shape[0] * (1 if whole else chunk_count)
    kept_branches = {branch for branch, _ in kept}
    for values, (_, placed) in zip(packed, chunk_placements(batch, chunk_count, wanted),
                                   strict=True):
        placed = tuple(chunk for chunk in placed if chunk[0] in kept_branches)
        if not placed:  # a guidance re-run's chunk
            continue
        # a copy: inductor may reuse the memory of the graph's tensors once the op has run
        run.record(Measurement(layer, kind, group, tuple(grid) or None, text_tokens, placed,
                               step.step, step.sigma, run.evaluation, values.clone()))


_OP = register_python_op("probe_keep", OP_SCHEMA, _keep, lambda *args: None)
