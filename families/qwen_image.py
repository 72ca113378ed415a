"""Qwen-Image (and Qwen-Image-Edit): 60 joint blocks over [text; image], MMDiT-like.

Its attention calls ComfyUI's masked entry point (``optimized_attention_masked``) with q, k, v
as [B, L, H*d] and the mask as the fifth argument; 0.3.64 always passes None there. The hook
steers calls whose mask is None or lets every token attend everywhere (all True, or an all-zero
bias), and leaves calls with a real mask untouched. Edit's reference-image tokens follow the
image tokens: steered with the sequence, kept out of the probe's token grid.

Mage-Flow (newer ComfyUI) runs 12 of Qwen-Image's blocks on a Flux.2 latent, one token per
latent pixel (patch size 1, read from the model), its text unrotated: the same adapter, its
own class and name.
"""

from __future__ import annotations

from ..hook.layers import LayerId, LayerMap
from . import reference_keys
from .base import FamilyAdapter, Placement, no_block_input
from .dit_blocks import dit_layer_map, install_block_patches, joint_layer, place_joint


class QwenImageFamily(FamilyAdapter):
    name = "qwen-image"
    label = "Qwen-Image"
    supported = "Qwen-Image"
    input_space_refusal = no_block_input("Qwen-Image projects text and image with different W_v")

    @staticmethod
    def matches(diffusion_model) -> bool:
        from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

        return isinstance(diffusion_model, QwenImageTransformer2DModel)

    def build_layer_map(self, model_patcher) -> LayerMap:
        net = model_patcher.get_model_object("diffusion_model")
        self.patch_size = int(net.patch_size)
        # Its blocks are "double_block" replaces to the host; one kind, so no aliases
        return dit_layer_map(self.name, self.label, {"double": len(net.transformer_blocks)},
                             aliases=False)

    def install(self, model_patcher) -> None:
        install_block_patches(model_patcher, self.layer_map.by_key)
        reference_keys.install(model_patcher)  # its edits may cache reference keys

    def self_attention_layer(self, options: dict) -> LayerId | None:
        return joint_layer(self.layer_map, options)

    def place(self, options: dict, n_q: int, n_k: int,
              latent_shape: tuple[int, ...] | None) -> Placement | None:
        return place_joint(self.layer_map, self.patch_size, options, n_q, latent_shape)


class MageFlowFamily(QwenImageFamily):
    """Mage-Flow's own class (Qwen-Image's blocks, patch size 1, 128 latent channels)."""

    name = "mage-flow"
    label = "Mage-Flow"
    supported = "Mage-Flow"
    input_space_refusal = no_block_input("Mage-Flow projects text and image with different W_v")

    @staticmethod
    def matches(diffusion_model) -> bool:
        try:
            from comfy.ldm.mage_flow.model import MageFlowTransformer2DModel
        except ImportError:  # hosts older than Mage-Flow
            return False
        return isinstance(diffusion_model, MageFlowTransformer2DModel)
