"""SD3.5 Large and Medium at their real block counts (38, 24) with rms qk-norm, at tiny width
(2 heads of 64): steering against the float64 formula, layer selection call by call, and
Medium's image-only self-attention in blocks 0-12 (x_block_self_attn_layers)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from host import tiny_models
from host.family_checks import compare_with_formula
from host.node_calls import adaptive, record_layers, skew

pytestmark = pytest.mark.host

BLOCKS = {"large": 38, "medium": 24}


@pytest.fixture(scope="module")
def sd35(comfy_host):
    return {variant: tiny_models.tiny_sd35(variant) for variant in BLOCKS}


def sample(model, **kw):
    """16 text tokens instead of 154: 38 blocks stay quick on a CPU."""

    def conditioning(seed):
        return [[c[:, :16], extra] for c, extra in tiny_models.sd3_conditioning(seed)]

    return tiny_models.sample(model, conditioning(1), conditioning(2), latent_channels=16, **kw)


def image_self(variant: str) -> set[int]:
    return set(range(13)) if variant == "medium" else set()


@pytest.mark.parametrize("variant", ["large", "medium"])
def test_layer_map_and_qk_norm(sd35, variant):
    from hopfield_circulation.families import adapter_for

    net = sd35[variant].get_model_object("diffusion_model")
    assert type(net.joint_blocks[0].x_block.attn.ln_q).__name__ == "RMSNorm"  # qk-norm built
    layer_map = adapter_for(sd35[variant]).layer_map
    n = BLOCKS[variant]
    assert layer_map.family == "sd3" and [layer.index for layer in layer_map.layers] == list(
        range(n))
    thirds = Counter(layer.group for layer in layer_map.layers)
    assert thirds == ({"early": 13, "middle": 13, "late": 12} if n == 38 else
                      {"early": 8, "middle": 8, "late": 8})


@pytest.mark.parametrize("variant", ["large", "medium"])
def test_identity_and_every_call_against_the_formula(nodes, sd35, variant):
    model = sd35[variant]
    base = sample(model, steps=1)
    assert torch.equal(sample(skew(nodes, model, alpha=1.0), steps=1), base)
    assert torch.equal(sample(adaptive(nodes, model, beta=0.0), steps=1), base)
    m, seen = record_layers(skew(nodes, model, alpha=0.95))
    checked, results = compare_with_formula(m, 0.95, 3.0)
    out = sample(checked, steps=1)
    assert torch.isfinite(out).all() and not torch.equal(out, base)
    n_calls = BLOCKS[variant] + len(image_self(variant))
    assert len(results) == len(seen) == n_calls
    assert max(err for err, _ in results) < 1e-3, results
    assert {(index, kind) for index, kind, _ in seen} == {
        (i, "joint") for i in range(BLOCKS[variant])} | {
        (i, "image_self") for i in image_self(variant)}


@pytest.mark.parametrize("variant, spec", [
    ("large", "late"), ("large", "0-3, 37"), ("medium", "early"), ("medium", "12-13"),
])
def test_layer_selection_counts_the_intended_calls(nodes, sd35, variant, spec):
    """Medium's image self-attention belongs to its block: selecting the block selects both."""
    from hopfield_circulation.families import adapter_for
    from hopfield_circulation.hook.layers import select_layers

    model = sd35[variant]
    expected = select_layers(spec, adapter_for(model).layer_map)
    m, seen = record_layers(skew(nodes, model, alpha=0.95, layers=spec))
    sample(m, steps=1)
    per_block = Counter(index for index, _, _ in seen)
    assert per_block == {i: 2 if i in image_self(variant) else 1
                         for i in range(BLOCKS[variant])}
    assert {(index, kind) for index, kind, hit in seen if hit} == {
        (index, kind) for index, kind, _ in seen if index in expected}
    assert all(hit == (index in expected) for index, _, hit in seen)


def test_chained_with_skip_layer_guidance(nodes, sd35):
    """SkipLayerGuidanceSD3's extra pass replaces joint blocks 7-9 of Large (its default)."""
    from comfy_extras.nodes_sd3 import SkipLayerGuidanceSD3

    model = sd35["large"]
    steered = skew(nodes, model, alpha=0.95)
    m, seen = record_layers(SkipLayerGuidanceSD3.execute(steered, "7, 8, 9", 3.0, 0.0,
                                                         1.0).result[0])
    out = sample(m, steps=1)
    assert torch.isfinite(out).all() and not torch.equal(out, sample(steered, steps=1))
    assert Counter(index for index, _, hit in seen if hit) == {
        i: 1 if i in (7, 8, 9) else 2 for i in range(38)}


def test_change_per_call_against_sdxl(sd35, sdxl, sampling):
    """The README's starting ranges: Large moves ~0.44x SDXL's change at (1.05, 3), Medium ~0.35x;
    (0.90, 3.5) roughly matches SDXL's paper point on Large."""
    from host.family_checks import relative_change

    sdxl_change = relative_change(sdxl, sampling["sdxl"], 1.05, 3.0)
    large = relative_change(sd35["large"], sample, 1.05, 3.0) / sdxl_change
    medium = relative_change(sd35["medium"], sample, 1.05, 3.0) / sdxl_change
    matched = relative_change(sd35["large"], sample, 0.90, 3.5) / sdxl_change
    assert 0.3 < large < 0.6 and 0.25 < medium < 0.5, (large, medium)
    assert 0.8 < matched < 1.25, matched
