"""What one self-attention call looks like to this pack's features, whatever the model family.

ComfyUI hands an attention override positional and keyword arguments whose layout depends on the
model (UNets: q, k, v as [B, L, H*d] with ``heads`` positional; MMDiT: ``heads=`` keyword and v
as [B, L, H, d]). ``hook.override`` parses them once into an ``AttentionCall`` that offers them
in the SDPA layout [B, H, L, d] (views made on first use), placed in the model and the schedule
by the model's family adapter, so that the circulation and the probe never look at raw
arguments.

Observers (the Stability Probe) are registered in ``model_options["transformer_options"]
[OBSERVERS_KEY]`` as a list of plain functions ``observer(call, out, steering) -> None``
(closures, never callable objects: ComfyUI deep-copies model_options on every clone). The
*outermost* of this pack's overrides notifies them once per attention call with the output the
model really uses, in the host's layout as the call returns it (``call.from_host(out)`` is its
[B, H, L, d] view), and the steering applied to it, so a probe sees the blended retrieval
whether it sits before or after a circulation node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..vocabulary import FeatureSpace
from .layers import LayerId
from .schedule import StepInfo

OBSERVERS_KEY = "hopfield_circulation_observers"
# Where the model has observers, the outermost of our hooks in a call puts its CallScope
# here, in the copy of the call's options it hands the hooks it chains; they report to it.
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


def heads_first(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, H*d] or [B, L, H, d] -> [B, H, L, d] (a view)."""
    if t.ndim == 3:
        t = t.view(t.shape[0], t.shape[1], heads, -1)  # Tensor.unflatten is Python, view is not
    return t.transpose(1, 2)


class AttentionCall:
    """One self-attention call in SDPA layout [B, H, L, d] (``q``, ``k``, ``v``), placed in the
    model and the schedule.

    The host hands its tensors over in its own layout (``host_q``, ``host_k``, ``host_v``:
    [B, L, H*d] from UNets, [B, L, H, d] or [B, H, L, d] from DiTs). The SDPA views are made on
    first use: a planned fused launch (circulation/patch.py) reads the host's tensors as they
    are and hands its output back in the host's layout, so most steered calls never make them.
    """

    __slots__ = ("host_q", "host_k", "host_v", "heads", "layer", "step_info",
                 "cond_or_uncond", "text_tokens", "token_grid", "transformer_options",
                 "host_heads_first", "output_heads_first", "latent_shape", "query_rows",
                 "_q", "_k", "_v")

    def __init__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                 layer: LayerId, step_info: StepInfo, cond_or_uncond: tuple[int, ...],
                 text_tokens: int = 0,
                 token_grid: tuple[int, ...] | None = None,
                 transformer_options: dict[str, Any] | None = None, *,
                 host_heads_first: bool = True, output_heads_first: bool = True,
                 latent_shape: tuple[int, ...] | None = None, query_rows: int | None = None):
        """q, k, v: [B, H, L, d], or the host's tensors when ``host_heads_first`` is False
        (viewed on first use). ``output_heads_first``: the host wants [B, H, L, d] back
        (skip_output_reshape), else [B, L, H*d]. ``latent_shape``: the model call's input
        (None when not known: maps are then not placed on the latent). ``query_rows``: the
        host's call had only that many queries, its keys ending with cached references whose
        queries ``q`` carries after its own (families/reference_keys.py); None: q is the
        host's."""
        self.host_q, self.host_k, self.host_v = q, k, v
        self.heads = heads
        self.layer = layer
        # Where the model call sits in the schedule (hook.schedule), its numbers read only when
        # asked: a compiled graph guards on every number it reads, and the model call's id
        # changes with every call, so reading it here made TorchCompileModel compile the
        # whole model again at its second call
        self.step_info = step_info
        self.cond_or_uncond = cond_or_uncond  # one entry per batch chunk: 0 cond, 1 uncond
        self.text_tokens = text_tokens  # joint attention: context tokens come first
        self.token_grid = token_grid  # (h, w[, tokens per row]): families/base.Placement
        self.transformer_options = {} if transformer_options is None else transformer_options
        self.host_heads_first, self.output_heads_first = host_heads_first, output_heads_first
        self.latent_shape = latent_shape
        self.query_rows = query_rows
        # each [B, H, L, d] view made when first asked for (the probe's value basis needs
        # only q and k)
        self._q, self._k, self._v = (q, k, v) if host_heads_first else (None, None, None)

    @property
    def q(self) -> torch.Tensor:
        if self._q is None:
            self._q = heads_first(self.host_q, self.heads)
        return self._q

    @property
    def k(self) -> torch.Tensor:
        if self._k is None:
            self._k = heads_first(self.host_k, self.heads)
        return self._k

    @property
    def v(self) -> torch.Tensor:
        if self._v is None:
            self._v = heads_first(self.host_v, self.heads)
        return self._v

    @property
    def sigma(self) -> float | None:
        """This model call's sigma, read once per model call (hook.schedule), when read."""
        return self.step_info.sigma

    @property
    def percent(self) -> float | None:
        """Schedule position 0..1 of this step, when known."""
        return self.step_info.percent

    @property
    def step(self) -> int | None:
        """Index of sigma in the sampler's schedule (nearest), when known."""
        return self.step_info.step

    @property
    def model_call(self) -> int:
        """Id of the model call of this attention call (-1: unknown)."""
        return self.step_info.model_call

    @property
    def batch(self) -> int:
        return self.host_q.shape[0]

    def to_host(self, out: torch.Tensor) -> torch.Tensor:
        """An output [B, H, L, d] in the layout the host's attention function returns (a view
        when ``out`` has the host's memory layout, as the fused kernel writes it)."""
        return out if self.output_heads_first else out.transpose(1, 2).flatten(2)

    def host_rows(self, out: torch.Tensor) -> torch.Tensor:
        """Of an output in the host's layout, the rows of the queries the host asked for."""
        rows = self.query_rows
        return out[:, :, :rows] if self.output_heads_first else out[:, :rows]

    def from_host(self, out: torch.Tensor) -> torch.Tensor:
        """An output in the host's layout as [B, H, L, d] (a view)."""
        return out if self.output_heads_first else heads_first(out, self.heads)


Observer = Callable[[AttentionCall, torch.Tensor, "Steering | None"], None]
