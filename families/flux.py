"""Flux (Flux.1 dev, schnell, Kontext, Fill; Flux.2) and Chroma (with Chroma Radiance).

Both run double-stream blocks, whose joint attention covers [text; image], then single-stream
blocks whose self-attention covers the same joined sequence; q and k reach the override after
RoPE as [B, H, L, d] (``skip_reshape``). Layers are the double blocks 0..n-1, then the single
blocks n..n+m-1 (Flux.1: 0-18 and 19-56; Flux.2 dev: 0-7 and 8-55), in early/middle/late
thirds of that order; "double" and "single" name each kind. Kontext's reference-image tokens
(and Flux.2's) follow the image tokens: they are steered with the rest of the sequence (the
paper's control acts on the whole square logit matrix, text included, as for SD3) but kept out
of the probe's token grid, under FluxKVCache too (reference_keys.py). Flux.2 is the same ComfyUI
class (``image_model="flux2"``) with one token per latent pixel (patch size 1, read from the
model as for Chroma Radiance's 16).
"""

from __future__ import annotations

from ..hook.layers import LayerId, LayerMap
from . import reference_keys
from .base import FamilyAdapter, Placement, no_block_input
from .dit_blocks import dit_layer_map, install_block_patches, joint_layer, place_joint


class FluxFamily(FamilyAdapter):
    name = "flux"
    label = "Flux"
    supported = "Flux (Flux.1 dev, schnell, Kontext; Flux.2)"
    input_space_refusal = no_block_input(
        "Flux-style double blocks project text and image with different W_v")

    @staticmethod
    def matches(diffusion_model) -> bool:
        from comfy.ldm.flux.model import Flux

        return isinstance(diffusion_model, Flux)

    def build_layer_map(self, model_patcher) -> LayerMap:
        net = model_patcher.get_model_object("diffusion_model")
        self.patch_size = int(net.patch_size)  # latent pixels per token side (Radiance: 16)
        counts = {"double": len(net.double_blocks), "single": len(net.single_blocks)}
        config = getattr(model_patcher.model, "model_config", None)
        flux2 = getattr(config, "unet_config", {}).get("image_model") == "flux2"
        return dit_layer_map(self.name, "Flux.2" if flux2 else self.label, counts, aliases=True)

    def install(self, model_patcher) -> None:
        install_block_patches(model_patcher, self.layer_map.by_key)
        reference_keys.install(model_patcher)  # its edits may cache reference keys

    def self_attention_layer(self, options: dict) -> LayerId | None:
        return joint_layer(self.layer_map, options)

    def place(self, options: dict, n_q: int, n_k: int,
              latent_shape: tuple[int, ...] | None) -> Placement | None:
        return place_joint(self.layer_map, self.patch_size, options, n_q, latent_shape)


class ChromaFamily(FluxFamily):
    """Chroma's own class (modulations from an approximator, no guidance input), same blocks."""

    name = "chroma"
    label = "Chroma"
    supported = "Chroma (and Chroma Radiance)"

    @staticmethod
    def matches(diffusion_model) -> bool:
        from comfy.ldm.chroma.model import Chroma

        return isinstance(diffusion_model, Chroma)
