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
        torch.full((per_chunk,), label == wanted, dtype=torch.bool, device=call.q.device)
        for label in chunks
    ])


def steers_branch(call: AttentionCall, branch: SteerBranch) -> bool:
    """Whether any chunk of this call belongs to the branch (cfg = 1 runs cond alone, and
    cond and uncond may come in separate calls): decided on the host, no work otherwise."""
    return branch == "both" or CFG_LABEL[branch] in call.cond_or_uncond


class RowMasks:
    """``active_rows`` made once per batch layout: a sampler repeats the same few layouts
    (chunk labels, batch size, device) in every attention call, so each mask is built on the
    first call that needs it and reused, read-only, by the rest. Inside a torch.compile trace
    the mask is built in the graph instead (a cache filled there would be a side effect)."""

    def __init__(self, branch: SteerBranch):
        self.branch = branch
        self._masks: dict[tuple, torch.Tensor | None] = {}

    def __call__(self, call: AttentionCall) -> torch.Tensor | None:
        if self.branch == "both":
            return None
        if torch.compiler.is_compiling():
            return active_rows(call, self.branch)
        key = (tuple(call.cond_or_uncond), call.batch, call.q.device)
        if key not in self._masks:
            self._masks[key] = active_rows(call, self.branch)
        return self._masks[key]
