"""What one self-attention call looks like to this pack's hooks, whatever the model family.

ComfyUI hands an attention override positional and keyword arguments whose layout depends on the
model (SDXL: q, k, v as [B, L, H*d] with ``heads`` positional; SD3: ``heads=`` keyword and v as
[B, L, H, d]). ``patching.override`` parses them once into an ``AttentionCall`` in the SDPA layout
[B, H, L, d] together with where in the model and the schedule the call is, so that the
circulation and the probe never look at raw arguments.

Observers (the Stability Probe) are registered in ``model_options["transformer_options"]
[OBSERVERS_KEY]`` as a list of plain functions ``observer(call, out) -> None`` (closures, never
callable objects: ComfyUI deep-copies model_options on every clone). The *outermost* of this
pack's overrides notifies them once per attention call with the output the model really uses,
so a probe sees the blended retrieval whether it sits before or after a circulation node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..hopfield.circulation import CirculationSettings
from ..hopfield.symmetry import adaptive_coefficients

OBSERVERS_KEY = "hopfield_circulation_observers"
# Set in the per-call transformer_options while one of our overrides runs (outermost detection).
ACTIVE_KEY = "hopfield_circulation_active"


@dataclass(frozen=True)
class LayerId:
    """Where a self-attention call sits in the model.

    family: "sdxl" (also SD1.x/SD2.x UNets) or "sd3".
    index:  SDXL: the paper's global attention-module index 0-139 (attn1 modules are even:
            Down 0-47, Mid 48-67, Up 68-139, counting attn1 and attn2 in diffusers order);
            SD3: the joint block index 0..depth-1.
    group:  SDXL "down" | "mid" | "up"; SD3 "early" | "middle" | "late" (thirds of the depth).
    kind:   "self" (SDXL attn1), "joint" (SD3 [text; image]) or "image_self" (SD3.5-M extra).
    """

    family: str
    index: int
    group: str
    kind: str


@dataclass
class Steering:
    """The circulation applied to this call, for observers that want to re-derive it."""

    settings: CirculationSettings
    space: str  # "value" | "input"
    eta_bar: torch.Tensor | None = None  # [B] or [1], adaptive only
    active: torch.Tensor | None = None  # bool [B] of steered samples; None: all

    def coefficients(self) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """(alpha_eff, beta_eff): floats when static, [B|1, 1, 1, 1] tensors when adaptive."""
        if self.eta_bar is None:
            return self.settings.alpha, self.settings.beta
        alpha, beta = adaptive_coefficients(self.settings.alpha, self.settings.beta, self.eta_bar)
        return alpha.reshape(-1, 1, 1, 1), beta.reshape(-1, 1, 1, 1)


@dataclass
class AttentionCall:
    q: torch.Tensor  # [B, H, L, d]
    k: torch.Tensor  # [B, H, L, d]
    v: torch.Tensor  # [B, H, L, d]
    heads: int
    layer: LayerId | None  # None when the host gave no way to place the call
    sigma: float | None  # this model call's sigma, read once per call (patching.schedule)
    percent: float | None  # schedule position 0..1 of this step, when known
    step: int | None  # index of sigma in the sampler's schedule (nearest), when known
    model_call: int  # id of the model call this attention call belongs to (-1: unknown)
    cond_or_uncond: list[int]  # one entry per batch chunk: 0 cond, 1 uncond
    text_tokens: int = 0  # SD3: context tokens come first in the joint sequence
    token_grid: tuple[int, int] | None = None  # (h, w) of the image tokens, row-major
    steering: Steering | None = None
    transformer_options: dict[str, Any] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.q.shape[0]


Observer = Callable[[AttentionCall, torch.Tensor], None]
