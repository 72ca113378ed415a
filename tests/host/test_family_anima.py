"""Anima (newer ComfyUI's image model on Cosmos Predict2's MiniTrainDIT) through real ComfyUI
sampling, on hosts that build it (0.3.64 predates it; 0.33.0 has it).

Each block makes a self-attention over the image's tokens and then a cross-attention to the
text, with the same options. The cases here give the text as many tokens as the image has (a
10 x 12 latent: a 5 x 6 grid, 30 tokens), so the two calls of a block have the same shapes
and only the model's attn1/attn2 patches tell them apart: the self-attention is steered, the
cross-attention must come back as the host made it.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from host import tiny_models
from host.family_checks import (
    assert_identity_settings_bit_identical,
    assert_one_graph_equal_to_eager,
    assert_probe_matches_literal,
    compare_with_formula,
    record_calls,
    relative_change,
)
from host.node_calls import adaptive, skew, steered_layers

pytestmark = pytest.mark.host

BLOCKS = 4
TOKENS = 30  # text tokens, as many as the image's


@pytest.fixture(scope="module")
def anima(comfy_host):
    if not tiny_models.host_has_anima():
        pytest.skip(tiny_models.NO_ANIMA)
    return tiny_models.tiny_anima()


def sample(model, batch=1, height=10, width=12, **kw):
    """Anima's latent is 5-D (Wan 2.1's format), one frame."""
    return tiny_models.sample_latent(
        model, tiny_models.qwen_image_conditioning(1, batch, TOKENS),
        tiny_models.qwen_image_conditioning(2, batch, TOKENS),
        torch.zeros(batch, 16, 1, height, width), **kw)


def self_attention_of(model):
    """Which calls are a block's self-attention, as the model's patches mark them."""
    from hopfield_circulation.families.anima import anima_marker

    marker = anima_marker(model)
    return marker.is_attn1


def test_layer_map_and_selection(nodes, anima):
    from hopfield_circulation.families import adapter_for

    model = tiny_models.tiny_anima(layers=28)
    layer_map = adapter_for(model).layer_map
    assert layer_map.family == "anima" and layer_map.aliases == {}
    assert [layer.index for layer in layer_map.layers] == list(range(28))
    assert {layer.kind for layer in layer_map.layers} == {"self"}
    assert Counter(layer.group for layer in layer_map.layers) == {
        "early": 10, "middle": 9, "late": 9}
    assert "Anima layers are the blocks 0-27" in layer_map.index_hint
    counts, steered = steered_layers(nodes, model, sample, "late, 3", steps=1)
    assert counts == {i: 1 for i in range(28)}
    assert steered == {3} | set(range(19, 28))


def test_identity_settings_are_bit_identical(nodes, anima):
    base = assert_identity_settings_bit_identical(nodes, anima, sample)
    assert base.shape == (1, 16, 1, 10, 12)


@pytest.mark.parametrize("mode", ["skew", "adaptive"])
def test_every_self_attention_matches_the_float64_formula(nodes, anima, mode):
    """Batch 2 at CFG: every block's self-attention is the formula over the image's tokens;
    its cross-attention, of the same shapes, is the host's own, bit for bit."""
    node = skew if mode == "skew" else adaptive
    alpha, beta = (0.95, 3.0) if mode == "skew" else (1.3, 5.0)
    m, calls = record_calls(node(nodes, anima, alpha=alpha, beta=beta))
    checked, results = compare_with_formula(m, alpha, beta, adaptive=mode == "adaptive",
                                            steered=self_attention_of(m))
    out = sample(checked, batch=2)
    assert torch.isfinite(out).all() and not torch.equal(out, sample(anima, batch=2))
    assert len(results) == len(calls) == BLOCKS * 2
    assert max(err for err, _ in results) < 1e-3, results
    assert {(q.shape[-2], text, grid) for _, q, _, _, text, grid in calls} == {
        (TOKENS, 0, (5, 6))}


def test_input_space_is_refused_with_the_reason(nodes, anima):
    with pytest.raises(ValueError, match="not of Anima's blocks. Use 'value'"):
        skew(nodes, anima, space="input")


def test_probe_against_the_literal_reference(probe_nodes, anima):
    """Each block's self-attention measured as the literal reference has it (family_checks),
    the image's tokens the whole sequence."""
    assert_probe_matches_literal(probe_nodes, anima, sample, blocks=BLOCKS, family="anima",
                                 latent_hw=(10, 12), text=0, grid=(5, 6))


def test_change_per_call_against_sdxl(anima, sdxl, sampling):
    """The README's starting range, on a 16 x 16 latent (64 image tokens, as the Flux rows):
    at the same (alpha, beta) the tiny Anima's self-attention moves about a tenth as much as
    SDXL's; (0.70, 4) moves it about as much as SDXL's paper point."""
    def larger(model, **kw):
        return sample(model, height=16, width=16, **kw)

    sdxl_change = relative_change(sdxl, sampling["sdxl"], 1.05, 3.0)
    ratio = relative_change(anima, larger, 1.05, 3.0) / sdxl_change
    matched = relative_change(anima, larger, 0.70, 4.0) / sdxl_change
    assert 0.06 < ratio < 0.2, ratio
    assert 0.6 < matched < 1.2, matched


def test_torch_compile_is_one_graph_equal_to_eager(nodes, anima):
    """TorchCompileModel (inductor) after Skew: one graph for the run, the marking patches
    inside it, and the compiled sample is the eager one up to the compiler's rounding."""
    assert_one_graph_equal_to_eager(skew(nodes, anima, alpha=0.9), anima, sample)
