"""Krea 2 (newer ComfyUI: ``krea2.model.SingleStreamDiT``).

One stream of transformer blocks, each a self-attention over the joined sequence [text; image;
reference latents] with one projection for every token; q and k reach the override after
per-head qk-norm and RoPE as [B, H, L, d] (``skip_reshape``), keys and values repeated per
query head where the model groups them. Layers are these blocks, in early/middle/late thirds.

Before them a text-fusion transformer mixes the text encoder's layers: its calls see the text
alone and carry no block index, so they are not layers and run as the host runs them.

The model names the running block itself (``block_type`` "single", ``block_index``) and the
text's length (``img_slice``); reference latents follow the image's tokens, steered with the
sequence and kept off the probe's grid, as Kontext's are.
"""

from __future__ import annotations

from ..hook.layers import LayerId, LayerMap
from .base import FamilyAdapter, Placement, capture_in_unets_only
from .dit_blocks import dit_layer_map, joint_layer, place_joint


class Krea2Family(FamilyAdapter):
    name = "krea2"
    supported = "Krea 2"
    input_space_refusal = capture_in_unets_only("Krea 2's blocks")

    @staticmethod
    def matches(diffusion_model) -> bool:
        try:
            from comfy.ldm.krea2.model import SingleStreamDiT
        except ImportError:  # hosts older than Krea 2
            return False
        return isinstance(diffusion_model, SingleStreamDiT)

    def build_layer_map(self, model_patcher) -> LayerMap:
        net = model_patcher.get_model_object("diffusion_model")
        self.patch_size = int(net.patch)
        return dit_layer_map(self.name, "Krea 2", {"single": len(net.blocks)}, aliases=False)

    def install(self, model_patcher) -> None:
        pass  # the host names the running block itself

    def self_attention_layer(self, options: dict) -> LayerId | None:
        return joint_layer(self.layer_map, options)

    def place(self, options: dict, n_q: int, n_k: int,
              latent_shape: tuple[int, ...] | None) -> Placement | None:
        return place_joint(self.layer_map, self.patch_size, options, n_q, latent_shape)
