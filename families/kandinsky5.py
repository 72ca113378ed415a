"""Kandinsky 5 Image (Lite; newer ComfyUI's ``kandinsky5.model.Kandinsky5`` built as
``Kandinsky5Image``).

Each visual block attends over the image's tokens alone (self-attention, q and k after
qk-norm and RoPE as [B, H, L, d] with ``skip_reshape``), then to the text (cross-attention).
Layers are the visual blocks in forward order (32 in the released model), in
early/middle/late thirds; the image's tokens are the whole sequence. Before them two text
blocks attend over the text alone: not layers, they run as the host runs them.

The host names the running visual block (``block_type`` "double", ``block_index``) to both of
its calls, and their shapes agree whenever the text has as many tokens as the image. So each
visual block's self-attention module is given a model-scoped object patch on its ``forward``
that hands the call a copy of the options marked as the block's self-attention, then runs it
as before (chaining a previous patch there); the cross-attention's calls carry no mark.

Kandinsky 5's video models (the same class, several frames per latent) are refused as the
other video models are.
"""

from __future__ import annotations

from ..hook.layers import LayerId, LayerMap
from .base import (
    FamilyAdapter,
    Placement,
    UnsupportedModelError,
    callable_to_wrap,
    capture_in_unets_only,
    patch_grid,
)
from .dit_blocks import self_attention_layer_map

SELF_KEY = "hopfield_circulation_self_attention"  # set on a visual block's self-attention
VIDEO = ("Kandinsky 5's video models are not supported (video models such as Wan and "
         "HunyuanVideo are refused alike); Kandinsky 5 Image is")


def self_attention_path(index: int) -> str:
    return f"diffusion_model.visual_transformer_blocks.{index}.self_attention.forward"


def _marking_forward(previous):
    """A self-attention forward that marks its call's options, then runs ``previous``."""

    def mark_self_attention(*args, **kwargs):
        options = kwargs.get("transformer_options")
        if options is not None:
            kwargs["transformer_options"] = {**options, SELF_KEY: True}
        return previous(*args, **kwargs)

    mark_self_attention.hopfield_self_attention = True
    mark_self_attention.__wrapped__ = previous
    return mark_self_attention


class Kandinsky5Family(FamilyAdapter):
    name = "kandinsky5"
    supported = "Kandinsky 5 Image"
    input_space_refusal = capture_in_unets_only("Kandinsky 5's blocks")

    @staticmethod
    def matches(diffusion_model) -> bool:
        try:
            from comfy.ldm.kandinsky5.model import Kandinsky5
        except ImportError:  # hosts older than Kandinsky 5
            return False
        return isinstance(diffusion_model, Kandinsky5)

    def build_layer_map(self, model_patcher) -> LayerMap:
        if type(model_patcher.model).__name__ != "Kandinsky5Image":
            raise UnsupportedModelError(VIDEO)
        net = model_patcher.get_model_object("diffusion_model")
        self.patch = tuple(int(p) for p in net.patch_size)  # (frames, rows, columns)
        return self_attention_layer_map(self.name, "Kandinsky 5",
                                        len(net.visual_transformer_blocks), "visual blocks")

    def install(self, model_patcher) -> None:
        # Every forward first: a host lacking one refuses the model before any is patched
        forwards = {self_attention_path(i): callable_to_wrap(
            model_patcher, self_attention_path(i), "Kandinsky 5 visual blocks' self-attention")
            for (i,) in self.layer_map.by_key}
        for path, previous in forwards.items():
            if getattr(previous, "hopfield_self_attention", False):
                continue  # an earlier node of ours already marks it
            model_patcher.add_object_patch(path, _marking_forward(previous))

    def self_attention_layer(self, options: dict) -> LayerId | None:
        if not options.get(SELF_KEY):
            return None  # a cross-attention, or a text block's self-attention
        return self.layer_map.by_key.get((options.get("block_index"),))

    def place(self, options: dict, n_q: int, n_k: int,
              latent_shape: tuple[int, ...] | None) -> Placement | None:
        layer = self.self_attention_layer(options)
        if layer is None or latent_shape is None:
            return None
        grid = patch_grid(latent_shape, self.patch[1], self.patch[2])
        frames = latent_shape[-3] if len(latent_shape) == 5 else 1
        if frames != 1 or n_q != grid[0] * grid[1]:
            return Placement(layer, None)  # steered; no map of tokens it cannot place
        return Placement(layer, grid)
