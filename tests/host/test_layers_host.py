"""Which attention calls the circulation acts on: layer selection, self vs cross-attention, SD1.x
UNets and SD3.5-M's extra image self-attention, counted call by call in real sampling."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from host.node_calls import record_layers, skew

pytestmark = pytest.mark.host


@pytest.mark.parametrize("family, spec", [
    ("sdxl", "down"), ("sdxl", "mid"), ("sdxl", "up"), ("sdxl", "0-3, 8-13"),
    ("sdxl", "all"), ("sd3", "1"), ("sd3", "early"), ("sd3", "all"),
])
def test_layer_selection_hits_exactly(request, nodes, sampling, family, spec):
    from hopfield_circulation.families import adapter_for
    from hopfield_circulation.hook.layers import select_layers

    model = request.getfixturevalue(family)
    layer_map = adapter_for(model).layer_map
    expected = select_layers(spec, layer_map)
    m, seen = record_layers(skew(nodes, model, alpha=1.05 if family == "sdxl" else 0.95,
                                 layers=spec))
    sampling[family](m, steps=2)
    assert {index for index, _, hit in seen if hit} == set(expected)
    assert all(hit == (index in expected) for index, _, hit in seen)
    # every self-attention layer once per model call (2 steps, cond and uncond batched)
    assert Counter(index for index, _, _ in seen) == {layer.index: 2 for layer in layer_map.layers}


def test_cross_attention_with_as_many_tokens_as_pixels(nodes, sdxl):
    """A 64-token text context at the 8x8 level: attn2 then has attn1's shapes exactly; it must
    still be left alone (the attn1 marker tells them apart, not the shapes)."""
    from hopfield_circulation.families import adapter_for
    from host.tiny_models import sample, sdxl_conditioning

    def conditioning(seed):
        return [[c[:, :64], extra] for c, extra in sdxl_conditioning(seed)]

    m, seen = record_layers(skew(nodes, sdxl))
    sample(m, conditioning(1), conditioning(2), latent_channels=4)
    layers = adapter_for(sdxl).layer_map.layers
    assert Counter(index for index, _, _ in seen) == {layer.index: 2 for layer in layers}
    assert {kind for _, kind, _ in seen} == {"self"}


def test_attn1_replaced_by_guidance_is_not_confused_with_attn2(nodes, sdxl):
    """PAG replaces the middle block's attn1 in its extra pass: the override then sees only that
    block's attn2, which must not be taken for attn1 (here with a 16-token context = 4x4)."""
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance
    from host.tiny_models import sample, sdxl_conditioning

    def conditioning(seed):
        return [[c[:, :16], extra] for c, extra in sdxl_conditioning(seed)]

    from hopfield_circulation.families import adapter_for

    m, seen = record_layers(PerturbedAttentionGuidance.execute(skew(nodes, sdxl), 3.0).result[0])
    out = sample(m, conditioning(1), conditioning(2), latent_channels=4)
    assert torch.isfinite(out).all()
    # per step: one batched cond+uncond call, then PAG's perturbed cond pass (middle attn1
    # replaced there, so that layer is not seen in it)
    layers = adapter_for(sdxl).layer_map.layers
    assert Counter(index for index, _, _ in seen) == {
        layer.index: 2 if layer.group == "mid" else 4 for layer in layers}


def test_sd15_unet_rides_the_sdxl_path(nodes, sampling, comfy_host):
    from hopfield_circulation.families import adapter_for
    from host.tiny_models import tiny_sd15

    model = tiny_sd15()
    layer_map = adapter_for(model).layer_map
    assert layer_map.family == "sdxl" and [layer.index for layer in layer_map.layers] == list(
        range(0, 14, 2))
    base = sampling["sd15"](model)
    assert torch.equal(sampling["sd15"](skew(nodes, model, alpha=1.0)), base)
    m, seen = record_layers(skew(nodes, model, layers="up"))
    out = sampling["sd15"](m)
    assert not torch.equal(out, base) and torch.isfinite(out).all()
    assert {index for index, _, hit in seen if hit} == {6, 8, 10, 12}


def test_sd35_image_self_attention_is_steered(nodes, sampling, comfy_host):
    from host.tiny_models import tiny_sd3

    model = tiny_sd3(x_block_self_attn_layers=[0])
    base = sampling["sd3"](model)
    assert torch.equal(sampling["sd3"](skew(nodes, model, alpha=1.0)), base)
    m, seen = record_layers(skew(nodes, model, alpha=0.95))
    out = sampling["sd3"](m)
    assert set(seen) == {(0, "image_self", True), (0, "joint", True), (1, "joint", True)}
    assert torch.isfinite(out).all() and not torch.equal(out, base)
