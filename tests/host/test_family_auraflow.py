"""AuraFlow (v0.3; Pony V7 is the same class) through real ComfyUI sampling.

The tiny model has the real layout at tiny width: heads 256 wide with their per-head
LayerNorm, 8 register tokens before the text, 2 double and 4 single blocks; the text comes
first, the image after it. No host names these blocks to attention: the `dit` block replaces
the model's loop calls publish them (dit_blocks.py), as for Flux on 0.3.64.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from host import tiny_models
from host.family_checks import (
    assert_identity_settings_bit_identical,
    assert_one_graph_equal_to_eager,
    assert_paper_point_names,
    assert_probe_matches_literal,
    compare_with_formula,
    record_calls,
    relative_change,
)
from host.node_calls import adaptive, skew, steered_layers

pytestmark = pytest.mark.host

BLOCKS = 6  # 2 double, 4 single
TEXT, IMAGE = 8 + 8, 30  # 8 registers and 8 text tokens; a 5 x 6 token grid


@pytest.fixture(scope="module")
def auraflow(comfy_host):
    return tiny_models.tiny_auraflow()


def sample(model, batch=1, height=10, width=12, **kw):
    """A 10 x 12 latent (SDXL's 4 channels): a 5 x 6 token grid."""
    return tiny_models.sample_latent(
        model, tiny_models.qwen_image_conditioning(1, batch),
        tiny_models.qwen_image_conditioning(2, batch), torch.zeros(batch, 4, height, width),
        **kw)


def test_layer_map_at_the_real_block_counts(nodes, comfy_host):
    from hopfield_circulation.families import adapter_for

    model = tiny_models.tiny_auraflow(double=4, single=32, width=64)
    layer_map = adapter_for(model).layer_map
    assert layer_map.family == "auraflow"
    assert Counter(layer.kind for layer in layer_map.layers) == {"joint": 4, "single": 32}
    assert Counter(layer.group for layer in layer_map.layers) == {
        "early": 12, "middle": 12, "late": 12}
    assert layer_map.aliases == {"double": frozenset(range(4)),
                                 "single": frozenset(range(4, 36))}
    assert ("AuraFlow layers are the double blocks 0-3, then the single blocks 4-35"
            in layer_map.index_hint)
    counts, steered = steered_layers(nodes, model, sample, "late, 3", steps=1)
    assert counts == {i: 1 for i in range(36)}
    assert steered == {3} | set(range(24, 36))


def test_identity_settings_are_bit_identical(nodes, auraflow):
    base = assert_identity_settings_bit_identical(nodes, auraflow, sample)
    assert not torch.equal(sample(skew(nodes, auraflow)), base)
    assert torch.equal(sample(auraflow), base)


@pytest.mark.parametrize("mode", ["skew", "adaptive"])
def test_every_block_matches_the_float64_formula(nodes, auraflow, mode):
    """Batch 2 at CFG: every double and single block's call is the formula over the whole
    sequence [registers; text; image], placed on the image's grid after the text."""
    node = skew if mode == "skew" else adaptive
    alpha, beta = (1.05, 3.0) if mode == "skew" else (1.2, 5.0)
    m, calls = record_calls(node(nodes, auraflow, alpha=alpha, beta=beta))
    checked, results = compare_with_formula(m, alpha, beta, adaptive=mode == "adaptive")
    out = sample(checked, batch=2)
    assert torch.isfinite(out).all() and not torch.equal(out, sample(auraflow, batch=2))
    assert len(results) == len(calls) == BLOCKS * 2
    assert max(err for err, _ in results) < 1e-3, results
    assert {(q.shape[-2], text, grid) for _, q, _, _, text, grid in calls} == {
        (TEXT + IMAGE, TEXT, (5, 6))}
    assert Counter(layer.kind for layer, *_ in calls) == {"joint": 4, "single": 8}


@pytest.mark.parametrize("spec, expected", [
    ("double", {0, 1}), ("single", {2, 3, 4, 5}), ("late", {4, 5}), ("0, 5", {0, 5}),
])
def test_layer_selection_hits_exactly(nodes, auraflow, spec, expected):
    counts, steered = steered_layers(nodes, auraflow, sample, spec)
    assert counts == {i: 2 for i in range(BLOCKS)}
    assert steered == expected


def test_paper_point_says_there_is_none_for_the_model(nodes, auraflow):
    assert_paper_point_names(nodes, auraflow, 0.95, 3.0, "AuraFlow")


def test_input_space_is_refused_with_the_reason(nodes, auraflow):
    with pytest.raises(ValueError, match="AuraFlow's double blocks project text and image"):
        skew(nodes, auraflow, space="input")


def test_probe_against_the_literal_reference(probe_nodes, auraflow):
    assert_probe_matches_literal(probe_nodes, auraflow, sample, blocks=BLOCKS, family="auraflow",
                                 latent_hw=(10, 12), text=TEXT, grid=(5, 6))


def test_change_per_call_against_sdxl(auraflow, sdxl, sampling):
    """The README's starting range, on a 16 x 16 latent (an 8 x 8 token grid, as the other
    DiT rows): at the same (alpha, beta) AuraFlow moves about as much as SDXL, so SDXL's
    points apply as they are."""
    def larger(model, **kw):
        return sample(model, height=16, width=16, **kw)

    sdxl_change = relative_change(sdxl, sampling["sdxl"], 1.05, 3.0)
    for alpha in (1.05, 0.95):
        ratio = relative_change(auraflow, larger, alpha, 3.0) / sdxl_change
        assert 0.85 < ratio < 1.2, (alpha, ratio)


def test_torch_compile_is_one_graph_equal_to_eager(nodes, auraflow):
    """TorchCompileModel (inductor) after Skew: the whole DiT is one graph for the run, and
    the compiled sample is the eager one up to the compiler's rounding."""
    assert_one_graph_equal_to_eager(skew(nodes, auraflow), auraflow, sample)
