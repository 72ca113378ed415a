"""Which samples of a call a circulation steers, from ComfyUI's CFG chunk labels."""

from __future__ import annotations

import torch

from ..hook.call import AttentionCall
from ..vocabulary import CFG_LABEL, SteerBranch


def active_rows(call: AttentionCall, branch: SteerBranch) -> torch.Tensor | None:
    """Bool [B] of the samples to steer; None means all of them.

    The batch holds len(cond_or_uncond) equal chunks in that order. Built from fills on q's
    device: a tensor made from a Python list would be a host-to-device copy, which waits for
    the device inside every attention call.
    """
    wanted = CFG_LABEL.get(branch)
    chunks = call.cond_or_uncond or [0]
    if wanted is None or all(label == wanted for label in chunks):
        return None  # "both", or a call of the chosen branch alone (cfg = 1, split calls)
    per_chunk = call.batch // len(chunks)
    return torch.cat([
        torch.full((per_chunk,), label == wanted, dtype=torch.bool, device=call.host_q.device)
        for label in chunks
    ])


def steers_branch(call: AttentionCall, branch: SteerBranch) -> bool:
    """Whether any chunk of this call belongs to the branch (cfg = 1 runs cond alone, and
    cond and uncond may come in separate calls): decided on the host, no work otherwise."""
    return branch == "both" or CFG_LABEL[branch] in call.cond_or_uncond


def steered_run(call: AttentionCall, branch: SteerBranch) -> slice | None:
    """The rows ``active_rows`` selects as one slice when they are one run of consecutive
    chunks (ComfyUI's [uncond, cond] batches: always), else None. Host-side, from the labels."""
    wanted = CFG_LABEL.get(branch)
    chunks = call.cond_or_uncond or [0]
    picked = [i for i, label in enumerate(chunks) if label == wanted]
    if not picked or picked != list(range(picked[0], picked[-1] + 1)):
        return None
    per_chunk = call.batch // len(chunks)
    return slice(picked[0] * per_chunk, (picked[-1] + 1) * per_chunk)


class RowMasks:
    """``active_rows`` (and ``steered_run``) made once per batch layout: a sampler repeats the
    same few layouts (chunk labels, batch size, device) in every attention call, so each is
    built on the first call that needs it and reused, read-only, by the rest. Inside a
    torch.compile trace the mask is built in the graph instead (a cache filled there would be
    a side effect)."""

    def __init__(self, branch: SteerBranch):
        self.branch = branch
        self._masks: dict[tuple, tuple[torch.Tensor | None, slice | None]] = {}

    def __call__(self, call: AttentionCall) -> tuple[torch.Tensor | None, slice | None]:
        """(mask, run): the bool [B] of steered samples (None: all) and, when they are one
        run of rows, that run as a slice."""
        if self.branch == "both":
            return None, None
        if torch.compiler.is_compiling():
            return active_rows(call, self.branch), None
        key = (tuple(call.cond_or_uncond), call.batch, call.host_q.device)
        found = self._masks.get(key)
        if found is None:
            mask = active_rows(call, self.branch)
            found = self._masks[key] = (mask, steered_run(call, self.branch) if mask is not None
                                        else None)
        return found
