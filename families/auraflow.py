"""AuraFlow (AuraFlow v0.1-v0.3, and Pony V7, trained on it): ComfyUI's ``aura.mmdit.MMDiT``.

Double blocks attend jointly over [text; image] (the text led by the model's learned register
tokens), then single blocks over the same joined sequence; q and k reach the override after
their per-head LayerNorm as [B, H, L, d] (``skip_reshape``). Layers are the double blocks
0..n-1, then the single blocks (v0.3: 0-3 and 4-35), in early/middle/late thirds; "double"
and "single" name each kind. The heads are 256 wide, which the pack's Triton kernels do not
take: on a GPU the two-call path steers them, on the host's own attention.

No ComfyUI release tells these blocks' attention which block runs; the model's loop calls
``dit`` double/single block replaces, so the publishing replaces Flux uses name it
(dit_blocks.py), keeping any replace already there.
"""

from __future__ import annotations

from ..hook.layers import LayerId, LayerMap
from .base import FamilyAdapter, Placement, no_block_input
from .dit_blocks import dit_layer_map, install_block_patches, joint_layer, place_joint


class AuraFlowFamily(FamilyAdapter):
    name = "auraflow"
    supported = "AuraFlow (and Pony V7)"
    input_space_refusal = no_block_input(
        "AuraFlow's double blocks project text and image with different W_v")

    @staticmethod
    def matches(diffusion_model) -> bool:
        from comfy.ldm.aura.mmdit import MMDiT

        return isinstance(diffusion_model, MMDiT)

    def build_layer_map(self, model_patcher) -> LayerMap:
        net = model_patcher.get_model_object("diffusion_model")
        self.patch_size = int(net.patch_size)
        counts = {"double": len(net.double_layers), "single": len(net.single_layers)}
        return dit_layer_map(self.name, "AuraFlow", counts, aliases=True)

    def install(self, model_patcher) -> None:
        install_block_patches(model_patcher, self.layer_map.by_key)

    def self_attention_layer(self, options: dict) -> LayerId | None:
        return joint_layer(self.layer_map, options)

    def place(self, options: dict, n_q: int, n_k: int,
              latent_shape: tuple[int, ...] | None) -> Placement | None:
        return place_joint(self.layer_map, self.patch_size, options, n_q, latent_shape)
