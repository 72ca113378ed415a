"""Krea 2 (newer ComfyUI's single-stream DiT) through real ComfyUI sampling, on hosts that
build it (0.33.0; 0.3.64 predates it and the cases skip there with that reason).

The tiny model has the real layout at tiny width: head dim 128, grouped keys (2 query heads
over 1 key head), qk-norm, 3-axis RoPE, sigmoid-gated attention, and the text-fusion
transformer before the blocks. Only the blocks are layers: the text fusion's calls must come
back as the host made them.
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

BLOCKS = 4
TEXT, IMAGE = 8, 30  # 8 text tokens; a 5 x 6 token grid


@pytest.fixture(scope="module")
def krea2(comfy_host):
    if not tiny_models.host_has_krea2():
        pytest.skip(tiny_models.NO_KREA2)
    return tiny_models.tiny_krea2()


def conditioning(seed, batch=1, reference=None, method=None):
    positive = tiny_models.krea2_conditioning(seed, batch, reference=reference)
    if method is not None:
        positive[0][1]["reference_latents_method"] = method
    return positive


def sample(model, batch=1, height=10, width=12, reference=None, method=None, **kw):
    """A 10 x 12 latent, 5-D as KSampler makes it for the Wan 2.1 latent format: a 5 x 6
    token grid."""
    return tiny_models.sample_latent(
        model, conditioning(1, batch, reference, method), conditioning(2, batch, reference, method),
        torch.zeros(batch, 16, 1, height, width), **kw)


def main_block(options) -> bool:
    return options.get("block_type") == "single"


def test_layer_map_at_the_real_block_count(nodes, krea2):
    from hopfield_circulation.families import adapter_for

    model = tiny_models.tiny_krea2(layers=28, width=64)
    layer_map = adapter_for(model).layer_map
    assert layer_map.family == "krea2" and layer_map.aliases == {}
    assert [layer.index for layer in layer_map.layers] == list(range(28))
    assert {layer.kind for layer in layer_map.layers} == {"single"}
    assert Counter(layer.group for layer in layer_map.layers) == {
        "early": 10, "middle": 9, "late": 9}
    assert "Krea 2 layers are the transformer blocks 0-27" in layer_map.index_hint
    counts, steered = steered_layers(nodes, model, sample, "late, 3", steps=1)
    assert counts == {i: 1 for i in range(28)}
    assert steered == {3} | set(range(19, 28))


def test_identity_settings_are_bit_identical(nodes, krea2):
    assert_identity_settings_bit_identical(nodes, krea2, sample)


@pytest.mark.parametrize("mode", ["skew", "adaptive"])
def test_every_block_matches_the_float64_formula(nodes, krea2, mode):
    """Batch 2 at CFG: every block's call is the formula over the whole sequence [text;
    image]; the text fusion's calls are the host's own, bit for bit."""
    node = skew if mode == "skew" else adaptive
    alpha, beta = (0.95, 2.0) if mode == "skew" else (1.2, 5.0)
    m, calls = record_calls(node(nodes, krea2, alpha=alpha, beta=beta))
    checked, results = compare_with_formula(m, alpha, beta, adaptive=mode == "adaptive",
                                            steered=main_block)
    out = sample(checked, batch=2)
    assert torch.isfinite(out).all() and not torch.equal(out, sample(krea2, batch=2))
    assert len(results) == len(calls) == BLOCKS * 2
    assert max(err for err, _ in results) < 1e-3, results
    assert {(q.shape[-2], text, grid) for _, q, _, _, text, grid in calls} == {
        (TEXT + IMAGE, TEXT, (5, 6))}


@pytest.mark.parametrize("spec, expected", [
    ("early", {0, 1}), ("late", {3}), ("0, 2-3", {0, 2, 3}),
])
def test_layer_selection_hits_exactly(nodes, krea2, spec, expected):
    counts, steered = steered_layers(nodes, krea2, sample, spec)
    assert counts == {i: 2 for i in range(BLOCKS)}
    assert steered == expected


@pytest.mark.parametrize("method", ["index", "index_timestep_zero"])
def test_reference_latents_are_steered_but_off_the_grid(nodes, krea2, method):
    """Reference latents (ReferenceLatent with a method) follow the image's tokens: all of it
    is steered (the formula over the whole sequence), the grid is the generated image's."""
    reference = [torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(3))]
    m, calls = record_calls(skew(nodes, krea2, alpha=0.95, beta=2.0))
    checked, results = compare_with_formula(m, 0.95, 2.0, steered=main_block)
    out = sample(checked, reference=reference, method=method)
    base = sample(krea2, reference=reference, method=method)
    assert torch.isfinite(out).all() and not torch.equal(out, base)
    assert not torch.equal(base, sample(krea2))  # the reference takes part
    assert len(calls) == len(results) == BLOCKS * 2
    assert {(q.shape[-2], text, grid) for _, q, _, _, text, grid in calls} == {
        (TEXT + IMAGE + 16, TEXT, (5, 6))}
    assert max(err for err, _ in results) < 1e-3


def test_paper_point_says_there_is_none_for_the_model(nodes, krea2):
    assert_paper_point_names(nodes, krea2, 0.95, 2.0, "Krea 2")


def test_input_space_is_refused_with_the_reason(nodes, krea2):
    with pytest.raises(ValueError, match="Krea 2's blocks. Use 'value'"):
        skew(nodes, krea2, space="input")


def test_probe_against_the_literal_reference(probe_nodes, krea2):
    assert_probe_matches_literal(probe_nodes, krea2, sample, blocks=BLOCKS, family="krea2",
                                 latent_hw=(10, 12), text=TEXT, grid=(5, 6))


def test_change_per_call_against_sdxl(krea2, sdxl, sampling):
    """The README's starting range, on a 16 x 16 latent (an 8 x 8 token grid, as the other
    DiT rows): at the same (alpha, beta) Krea 2 moves about 1.4x as much as SDXL; (0.95, 2)
    and (1.05, 2) bring it to SDXL's paper point."""
    def larger(model, **kw):
        return sample(model, height=16, width=16, **kw)

    sdxl_change = relative_change(sdxl, sampling["sdxl"], 1.05, 3.0)
    same = relative_change(krea2, larger, 1.05, 3.0) / sdxl_change
    assert 1.2 < same < 1.7, same
    for alpha in (0.95, 1.05):
        matched = relative_change(krea2, larger, alpha, 2.0) / sdxl_change
        assert 0.85 < matched < 1.15, (alpha, matched)


def test_torch_compile_is_one_graph_equal_to_eager(nodes, krea2):
    """TorchCompileModel (inductor) after Skew: the whole DiT, text fusion included, is one
    graph for the run, and the compiled sample is the eager one up to the compiler's
    rounding."""
    assert_one_graph_equal_to_eager(skew(nodes, krea2, alpha=0.95, beta=2.0), krea2, sample)
