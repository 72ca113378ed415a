"""Families the pack does not support are refused at patch time, naming the supported ones and,
where known, why: video models (Wan, HunyuanVideo, whose blocks look like Flux's) and
HiDream-O1. Lumina 2 on a host that names no block: test_family_lumina.py."""

from __future__ import annotations

import pytest
from host import tiny_models
from host.node_calls import adaptive, skew

pytestmark = pytest.mark.host

SUPPORTED = ("SDXL (and SD1.x/SD2.x UNets), SD3/SD3.5 MMDiT, Flux (Flux.1 dev, schnell, "
             "Kontext; Flux.2), Chroma (and Chroma Radiance), Qwen-Image, Lumina 2 (and "
             "Z-Image), Anima, HiDream (I1, E1), AuraFlow (and Pony V7), Krea 2, "
             "Mage-Flow and Kandinsky 5 Image models")


@pytest.mark.parametrize("name, backbone", [
    ("wan", "WanModel"), ("hunyuan_video", "HunyuanVideo"),
])
def test_refused_with_the_supported_families(nodes, comfy_host, name, backbone):
    from hopfield_circulation.families import UnsupportedModelError
    from hopfield_circulation.nodes import probe_nodes

    model = tiny_models.tiny_unsupported(name)
    for patch in (lambda: skew(nodes, model), lambda: adaptive(nodes, model),
                  lambda: probe_nodes.StabilityProbe.execute(model, "value", 64, 0.0, 1.0,
                                                             "cond", "all")):
        with pytest.raises(UnsupportedModelError) as refused:
            patch()
        assert str(refused.value).endswith(  # after the node's name
            f"Hopfield Circulation supports {SUPPORTED}; this model is "
            f"{type(model.model).__name__} with a {backbone} backbone (a video model: the "
            "pack steers image models)")


def test_hidream_o1_is_refused_with_the_reason(nodes, comfy_host):
    """HiDream-O1 (newer hosts; built at its released size on the meta device): its attention
    never sees the square logit matrix, and the refusal says why."""
    import comfy.supported_models
    import torch
    from hopfield_circulation.families import UnsupportedModelError, adapter_for
    from host.node_calls import built_on_meta

    if not hasattr(comfy.supported_models, "HiDreamO1"):
        pytest.skip("this host has no HiDream-O1 (ComfyUI 0.3.64 predates it; 0.33.0 builds it)")
    _, patcher = built_on_meta("HiDreamO1", {"image_model": "hidream_o1"}, torch.bfloat16)
    with pytest.raises(UnsupportedModelError, match="HiDreamO1Transformer backbone "
                       r"\(HiDream-O1's attention hands over the generated tokens' queries"):
        adapter_for(patcher)
