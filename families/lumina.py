"""Lumina 2 and Z-Image (ComfyUI's NextDiT, with NewBie and Z-Image's pixel-space variant).

One stream of transformer blocks, each a self-attention over the whole joined sequence
[text; image] with one projection for every token; q and k reach the override after qk-norm
and RoPE as [B, H, L, d] (``skip_reshape``), keys and values repeated per query head where the
model groups them (Lumina 2: 24 query heads over 8). Layers are these blocks, 0-25 on Lumina 2
and 0-29 on Z-Image, in early/middle/late thirds.

Before them the model refines each part alone: two blocks over the text, two over the image
(Z-Image's edit variant: one more part, SigLIP features). Those calls attend over one part of
the sequence with no block index in their options; they are not layers and run as the host
runs them.

The sequence is [text; image] (Z-Image pads the text and the image each to a multiple of 32
tokens with learned tokens, the image's padding after it); with reference images (Z-Image's
edit variant) their text, features and latents come first and the generated image last. The
image's tokens are placed on its grid; everything before them counts as text.

ComfyUI tells these models' attention which block runs from 0.5.0 on (``block_type`` "double",
``block_index``). Older hosts give it no block index and the model no block replace to publish
one, so a call could not be placed: the adapter refuses the model there, naming the version.
"""

from __future__ import annotations

from ..hook.layers import LayerId, LayerMap
from .base import (
    FamilyAdapter,
    Placement,
    UnsupportedModelError,
    capture_in_unets_only,
    code_constants,
    patch_grid,
)
from .dit_blocks import dit_layer_map, joint_layer

OLD_HOST = (
    "Lumina 2 and Z-Image can be steered and probed on ComfyUI 0.5.0 and later, which tells "
    "their attention which block runs; this ComfyUI does not, so no call could be placed. "
    "Update ComfyUI to use the Hopfield Circulation nodes with this model"
)


def host_names_blocks(net_class) -> bool:
    """Whether the host's NextDiT puts ``block_index`` in the options its blocks see (0.5.0
    and later). Read from its forward's constants, once per patch: no source file needed."""
    return "block_index" in code_constants(getattr(net_class, "_forward", None))


class LuminaFamily(FamilyAdapter):
    name = "lumina2"  # ComfyUI's image_model for both; a Z-Image model's adapter says "z-image"
    supported = "Lumina 2 (and Z-Image)"
    input_space_refusal = capture_in_unets_only("Lumina 2 or Z-Image blocks")

    @staticmethod
    def matches(diffusion_model) -> bool:
        from comfy.ldm.lumina.model import NextDiT

        if not isinstance(diffusion_model, NextDiT):
            return False
        if not host_names_blocks(type(diffusion_model)):
            raise UnsupportedModelError(OLD_HOST)
        return True

    def build_layer_map(self, model_patcher) -> LayerMap:
        net = model_patcher.get_model_object("diffusion_model")
        self.patch_size = int(net.patch_size)
        self.pad_multiple = int(getattr(net, "pad_tokens_multiple", None) or 1)
        config = type(getattr(model_patcher.model, "model_config", None)).__name__
        if config.startswith("ZImage"):  # its own config class (pixel space too)
            self.name, label = "z-image", "Z-Image"
        else:
            label = "Lumina 2"
        return dit_layer_map(self.name, label, {"double": len(net.layers)}, aliases=False)

    def install(self, model_patcher) -> None:
        pass  # the host names the running block itself

    def self_attention_layer(self, options: dict) -> LayerId | None:
        return joint_layer(self.layer_map, options)

    def place(self, options: dict, n_q: int, n_k: int,
              latent_shape: tuple[int, ...] | None) -> Placement | None:
        layer = self.self_attention_layer(options)
        if layer is None or latent_shape is None:
            return None  # a refiner's call (one part of the sequence), or no latent
        # The model pads the latent to whole patches, then (Z-Image) the tokens to a multiple
        grid = patch_grid(latent_shape, self.patch_size)
        image_tokens = grid[0] * grid[1]
        padded = image_tokens + (-image_tokens) % self.pad_multiple
        text = n_q - padded
        if text < 0:
            return None
        return Placement(layer, grid, text)
