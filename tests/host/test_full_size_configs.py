"""The full-size model configurations the GPU tier and benchmarks/bench_e2e_gpu.py build
(tests/gpu/full_size_models.py), checked here without a GPU: each builds in ComfyUI on the meta
device (no weights) at its released size, and the pack's family adapter places its layers. So
do the released configurations of families the GPU runs do not build (HiDream-I1, AuraFlow),
as ComfyUI's model detection sets them up."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.host

# name: (parameters in billions, family, layers the adapter maps, blocks with image-only
#        self-attention besides the joint one: SD3.5-Medium's first 13)
EXPECTED = {
    "sdxl": (2.57, "sdxl", 70, 0),
    "sd3-medium": (2.03, "sd3", 24, 0),
    "sd3.5-medium": (2.24, "sd3", 24, 13),
    "sd3.5-large": (8.06, "sd3", 38, 0),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_full_size_config_builds_and_is_placed(comfy_host, name):
    from gpu.full_size_models import MODELS
    from hopfield_circulation.families import adapter_for
    from host.node_calls import built_on_meta

    model, patcher = built_on_meta(*MODELS[name], torch.float16)
    billions, family, layers, image_only = EXPECTED[name]
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == billions
    blocks = getattr(model.diffusion_model, "joint_blocks", [])
    assert sum(bool(getattr(b.x_block, "x_block_self_attn", False)) for b in blocks) == image_only
    adapter = adapter_for(patcher)
    assert adapter.name == family and len(adapter.layer_map.layers) == layers


# name: (config class, unet config as ComfyUI's model detection gives the released checkpoint,
#        parameters in billions, family, layers, the layer map's words for them)
RELEASED = {
    "hidream-i1": ("HiDream", dict(
        image_model="hidream", attention_head_dim=128, axes_dims_rope=[64, 32, 32],
        caption_channels=[4096, 4096], max_resolution=[128, 128], in_channels=16,
        llama_layers=list(range(32)) + [31] * 16, num_attention_heads=20,
        num_routed_experts=4, num_activated_experts=2, num_layers=16, num_single_layers=32,
        out_channels=16, patch_size=2, text_emb_dim=2048),
        17.11, "hidream", 48, "the double blocks 0-15, then the single blocks 16-47"),
    # max_seq: its positional table (64 x 64 tokens)
    "auraflow-0.3": ("AuraFlow", dict(max_seq=4096, cond_seq_dim=2048, n_double_layers=4,
                                      n_layers=36),
                     6.84, "auraflow", 36, "the double blocks 0-3, then the single blocks 4-35"),
}


@pytest.mark.parametrize("name", list(RELEASED))
def test_released_config_builds_and_is_placed(comfy_host, name):
    from hopfield_circulation.families import adapter_for
    from host.node_calls import built_on_meta

    config_class, unet, billions, family, layers, words = RELEASED[name]
    model, patcher = built_on_meta(config_class, unet, torch.bfloat16)
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == billions
    adapter = adapter_for(patcher)
    assert adapter.name == family and len(adapter.layer_map.layers) == layers
    assert words in adapter.layer_map.index_hint
