"""What one self-attention call looks like to this pack's features, whatever the model family.

ComfyUI hands an attention override positional and keyword arguments whose layout depends on the
model (UNets: q, k, v as [B, L, H*d] with ``heads`` positional; MMDiT: ``heads=`` keyword and v
as [B, L, H, d]). ``hook.override`` parses them once into an ``AttentionCall`` in the SDPA layout
[B, H, L, d], placed in the model and the schedule by the model's family adapter, so that the
circulation and the probe never look at raw arguments.

Observers (the Stability Probe) are registered in ``model_options["transformer_options"]
[OBSERVERS_KEY]`` as a list of plain functions ``observer(call, out, steering) -> None``
(closures, never callable objects: ComfyUI deep-copies model_options on every clone). The
*outermost* of this pack's overrides notifies them once per attention call with the output the
model really uses and the steering applied to it, so a probe sees the blended retrieval whether
it sits before or after a circulation node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..vocabulary import FeatureSpace
from .layers import LayerId

OBSERVERS_KEY = "hopfield_circulation_observers"
# The outermost of our hooks in a call puts its CallScope here; nested hooks report to it.
SCOPE_KEY = "hopfield_circulation_scope"


@dataclass(frozen=True, slots=True)
class Steering:
    """What a circulation applied to one call, with the coefficients it really used, so an
    observer can re-derive the blend in another feature space without recomputing them."""

    space: FeatureSpace
    alpha: torch.Tensor | float  # alpha_eff: a float, or [B|1, 1, 1, 1] when adaptive
    beta: torch.Tensor | float  # beta_eff, likewise
    norm_match: bool
    active: torch.Tensor | None = None  # bool [B] of steered samples; None: all


@dataclass(slots=True)
class CallScope:
    """One attention call as seen by the chain of our hooks: the outermost owns it."""

    steering: Steering | None = None


@dataclass(slots=True)
class AttentionCall:
    q: torch.Tensor  # [B, H, L, d]
    k: torch.Tensor  # [B, H, L, d]
    v: torch.Tensor  # [B, H, L, d]
    heads: int
    layer: LayerId
    sigma: float | None  # this model call's sigma, read once per call (hook.schedule)
    percent: float | None  # schedule position 0..1 of this step, when known
    step: int | None  # index of sigma in the sampler's schedule (nearest), when known
    model_call: int  # id of the model call this attention call belongs to (-1: unknown)
    cond_or_uncond: list[int]  # one entry per batch chunk: 0 cond, 1 uncond
    text_tokens: int = 0  # joint attention: context tokens come first in the sequence
    token_grid: tuple[int, int] | None = None  # (h, w) of the image tokens, row-major
    transformer_options: dict[str, Any] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.q.shape[0]


Observer = Callable[[AttentionCall, torch.Tensor, "Steering | None"], None]
