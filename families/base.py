"""The one interface every model family implements, so the hook core and the features never
ask which family a model is: detection, the layer map, what must be installed on a model to
place its attention calls, how a call is placed, and which feature spaces it supports.

Adding a family is one module here with a class implementing ``FamilyAdapter`` (and its tests),
listed in ``families.ADAPTERS``.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..hook.layers import LayerId, LayerMap
from ..vocabulary import FeatureSpace

log = logging.getLogger(__name__)


class UnsupportedModelError(ValueError):
    pass


@dataclass(frozen=True)
class Placement:
    """Where a self-attention call sits: its layer and where its image tokens are."""

    layer: LayerId
    # (h, w) of the image tokens, row-major; (h, w, n) where each row of the sequence holds n
    # tokens of which the image's are the first w (HiDream-E1's reference follows them);
    # None: not known (the call is steered, the probe keeps no map of it)
    token_grid: tuple[int, ...] | None
    text_tokens: int = 0  # joint attention: context tokens come first in the sequence


class InputSpace(ABC):
    """The paper's input space of a self-attention layer: the block input X its values are
    projected from, and that projection as the layer applies it."""

    @abstractmethod
    def block_input(self, options: dict) -> torch.Tensor:
        """X [B, L, C] of the call described by ``options``; raises when it was not captured."""

    @abstractmethod
    def value_projection(self, options: dict, like: torch.Tensor):
        """(W_v [H*d, C], b_v [H*d] or None) of that layer, cast like ``like``."""

    def channel_widths(self) -> frozenset[int]:
        """The widths C the model's block inputs have (what may be made per width in advance;
        empty: not known before the calls)."""
        return frozenset()


def patch_grid(latent_shape: tuple[int, ...], patch: int,
               column_patch: int | None = None) -> tuple[int, int]:
    """(h, w) of the image tokens of a latent the model pads to whole patches (ceil, as the
    host's own token grid); ``column_patch``: a patch width other than its height."""
    return (math.ceil(latent_shape[-2] / patch),
            math.ceil(latent_shape[-1] / (column_patch or patch)))


def code_constants(function) -> tuple:
    """The constants a host function's code uses (its string keys among them), or () where it
    has no code object: what an adapter reads, without a source file, to know whether the
    host's model names the running block."""
    code = getattr(function, "__code__", None)
    return code.co_consts if code is not None else ()


def callable_to_wrap(model_patcher, path: str, what: str):
    """The callable at ``path`` on the model (its object patches applied), which an adapter
    wraps to name the running block to attention; refuses the model, saying where it looked,
    on a host whose ``what`` has none there (a host calling attention another way)."""
    try:
        found = model_patcher.get_model_object(path)
    except AttributeError:
        found = None
    if not callable(found):
        raise UnsupportedModelError(
            f"this ComfyUI's {what} have nothing to wrap at {path} for the pack to name the "
            "running block to attention, so no call could be placed. Update Hopfield "
            "Circulation (or report the ComfyUI version)")
    return found


def no_block_input(why: str) -> str:
    """The refusal of the input space for a model whose attention has no single block input X
    (``why``: what it projects differently)."""
    return ("space='input' (the authors' input-space formulation) and basis='input' exist for "
            f"UNet (SDXL) self-attention only: {why}, so there is no single block input X. "
            "Use 'value'.")


def capture_in_unets_only(blocks: str) -> str:
    """The refusal of the input space for a model whose blocks do have one block input X (one
    projection for every token) but which the pack does not capture: ``blocks`` names them."""
    return ("space='input' (the authors' input-space formulation) and basis='input' exist for "
            "UNet (SDXL) self-attention only: the pack captures the block input X of UNet "
            f"attention alone, not of {blocks}. Use 'value'.")


class FamilyAdapter(ABC):
    """One architecture, bound to one model (a clone lineage)."""

    name: ClassVar[str]  # the layer index's name in reports and messages ("sdxl", "sd3")
    supported: ClassVar[str]  # what it covers, for the message refusing other models
    # Why the input space is not offered (None: it is)
    input_space_refusal: ClassVar[str | None] = None

    def __init__(self, model_patcher):
        self.layer_map = self.build_layer_map(model_patcher)
        self.unreachable: set[int] = set()  # layers note_unreachable has named

    def self_attention_layer(self, options: dict) -> LayerId | None:
        """The self-attention layer a call belongs to, whatever its shapes (None: a
        cross-attention, or not known): where a call the pack cannot place belongs."""
        return None

    def first_reachable(self) -> int:
        """The first layer in forward order that no other patch has made unreachable (-1:
        none): where a compiled graph marks, once, that our hooks ran and placed its calls.
        Asked in a trace only, where the layers before it have been met already."""
        return next((layer.index for layer in self.layer_map.layers
                     if layer.index not in self.unreachable), -1)

    def note_unreachable(self, layer: LayerId, n_q: int, n_k: int) -> None:
        """Say once per layer that another patch changed its self-attention's tokens, so it
        is left to the host (ToMe merges a UNet's attn1 queries, HyperTile tiles them)."""
        if layer.index in self.unreachable:
            return
        self.unreachable.add(layer.index)
        log.warning(
            "Hopfield Circulation: another patch on this model changed the tokens of its "
            "self-attention at layer %d (%d queries, %d keys, where the layer has as many of "
            "each: ToMe, HyperTile or another attn1 patch). The skew part needs every "
            "token's query and key, so this layer is left to the host: neither steered nor "
            "probed. Take that patch off the model to steer it.", layer.index, n_q, n_k)

    @staticmethod
    @abstractmethod
    def matches(diffusion_model) -> bool:
        """Whether this adapter handles the model's diffusion_model (raises for a look-alike
        it recognises but refuses, naming why)."""

    @abstractmethod
    def build_layer_map(self, model_patcher) -> LayerMap: ...

    @abstractmethod
    def install(self, model_patcher) -> None:
        """Install on ``model_patcher`` (a clone) what ``place`` needs, once per lineage."""

    @abstractmethod
    def place(self, options: dict, n_q: int, n_k: int,
              latent_shape: tuple[int, ...] | None) -> Placement | None:
        """The call's placement from its transformer_options, its lengths and the model call's
        latent shape (None when unknown), or None for calls the pack leaves alone
        (cross-attention, tokens merged by another patch, unknown)."""

    def require_space(self, space: FeatureSpace) -> None:
        """Refuse, with the reason, a feature space this family does not offer."""
        if space == "input" and self.input_space_refusal:
            raise ValueError(self.input_space_refusal)

    def input_space(self, model_patcher) -> InputSpace:
        """The input space of this model's self-attention (installs its capture)."""
        self.require_space("input")
        raise NotImplementedError(f"{type(self).__name__} offers an input space but no capture")
