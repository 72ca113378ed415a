"""Kandinsky 5 Image (newer ComfyUI) through real ComfyUI sampling, on hosts that build it
(0.33.0; 0.3.64 predates it and the cases skip there with that reason).

The tiny model has the real layout at tiny width: head dim 128 (RoPE over 32 + 48 + 48),
qk-norm, 2 text blocks and 4 visual blocks, each visual block a self-attention over the
image's tokens and a cross-attention to the text. The text here has as many tokens as the
image (30), so both calls of a visual block have the same shapes and options: only the
object patch's mark tells them apart. Every self-attention must match the float64 formula,
every other call must be the host's own, bit for bit.
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
IMAGE = 30  # a 5 x 6 token grid; the text has as many tokens


@pytest.fixture(scope="module")
def kandinsky5(comfy_host):
    if not tiny_models.host_has_kandinsky5():
        pytest.skip(tiny_models.NO_KANDINSKY5)
    return tiny_models.tiny_kandinsky5()


def conditioning(seed, batch=1, tokens=IMAGE):
    """Qwen2.5-VL's text [B, tokens, 32] and CLIP's pooled [B, 32], at tiny width."""
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, 32, generator=gen),
             {"pooled_output": torch.randn(batch, 32, generator=gen)}]]


def sample(model, batch=1, height=10, width=12, **kw):
    """A 10 x 12 latent (Flux's 16 channels): a 5 x 6 token grid."""
    return tiny_models.sample_latent(model, conditioning(1, batch), conditioning(2, batch),
                                     torch.zeros(batch, 16, height, width), **kw)


def self_attention(options) -> bool:
    from hopfield_circulation.families.kandinsky5 import SELF_KEY

    return bool(options.get(SELF_KEY))


def test_layer_map_at_the_real_block_count(nodes, kandinsky5):
    from hopfield_circulation.families import adapter_for

    model = tiny_models.tiny_kandinsky5(blocks=32)
    layer_map = adapter_for(model).layer_map
    assert layer_map.family == "kandinsky5" and layer_map.aliases == {}
    assert [layer.index for layer in layer_map.layers] == list(range(32))
    assert Counter(layer.group for layer in layer_map.layers) == {
        "early": 11, "middle": 11, "late": 10}
    assert "Kandinsky 5 layers are the visual blocks 0-31" in layer_map.index_hint
    counts, steered = steered_layers(nodes, model, sample, "late, 3", steps=1)
    assert counts == {i: 1 for i in range(32)}
    assert steered == {3} | set(range(22, 32))


def test_identity_settings_are_bit_identical_and_the_model_stays_unpatched(nodes, kandinsky5):
    base = assert_identity_settings_bit_identical(nodes, kandinsky5, sample)
    assert not torch.equal(sample(skew(nodes, kandinsky5, alpha=0.7, beta=4.0)), base)
    assert torch.equal(sample(kandinsky5), base)
    assert not kandinsky5.object_patches


@pytest.mark.parametrize("mode", ["skew", "adaptive"])
def test_every_self_attention_matches_the_formula_and_nothing_else_moves(nodes, kandinsky5,
                                                                         mode):
    """Batch 2 at CFG: every visual block's self-attention is the formula; its
    cross-attention (the same shapes and block options here) and the text blocks' calls are
    the host's own, bit for bit."""
    node = skew if mode == "skew" else adaptive
    alpha, beta = (0.7, 4.0) if mode == "skew" else (1.2, 5.0)
    m, calls = record_calls(node(nodes, kandinsky5, alpha=alpha, beta=beta))
    checked, results = compare_with_formula(m, alpha, beta, adaptive=mode == "adaptive",
                                            steered=self_attention)
    out = sample(checked, batch=2)
    assert torch.isfinite(out).all() and not torch.equal(out, sample(kandinsky5, batch=2))
    assert len(results) == len(calls) == BLOCKS * 2
    assert max(err for err, _ in results) < 1e-3, results
    assert {(q.shape[-2], text, grid) for _, q, _, _, text, grid in calls} == {
        (IMAGE, 0, (5, 6))}


@pytest.mark.parametrize("spec, expected", [
    ("early", {0, 1}), ("late", {3}), ("0, 2-3", {0, 2, 3}),
])
def test_layer_selection_hits_exactly(nodes, kandinsky5, spec, expected):
    counts, steered = steered_layers(nodes, kandinsky5, sample, spec)
    assert counts == {i: 2 for i in range(BLOCKS)}
    assert steered == expected


def test_video_models_are_refused(nodes, kandinsky5):
    from hopfield_circulation.families import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="Kandinsky 5's video models are not"):
        skew(nodes, tiny_models.tiny_kandinsky5(video=True))


def test_blocks_without_a_self_attention_forward_are_refused(nodes, kandinsky5):
    """A host whose visual blocks call self-attention another way (here one block's forward
    taken away) gives no self-attention its mark: the nodes refuse the model, saying where."""
    from hopfield_circulation.families import UnsupportedModelError
    from hopfield_circulation.families.kandinsky5 import self_attention_path

    m = kandinsky5.clone()
    m.add_object_patch(self_attention_path(2), None)
    with pytest.raises(UnsupportedModelError, match=r"nothing to wrap at diffusion_model\."
                       r"visual_transformer_blocks\.2\.self_attention\.forward"):
        skew(nodes, m)


def test_paper_point_and_input_space(nodes, kandinsky5):
    assert_paper_point_names(nodes, kandinsky5, 0.7, 4.0, "Kandinsky 5")
    with pytest.raises(ValueError, match="Kandinsky 5's blocks. Use 'value'"):
        skew(nodes, kandinsky5, space="input")


def test_probe_against_the_literal_reference(probe_nodes, kandinsky5):
    assert_probe_matches_literal(probe_nodes, kandinsky5, sample, blocks=BLOCKS,
                                 family="kandinsky5", latent_hw=(10, 12), text=0, grid=(5, 6))


def test_change_per_call_against_sdxl(kandinsky5, sdxl, sampling):
    """The README's starting range, on a 16 x 16 latent (8 x 8 tokens, as the other DiT rows,
    with 8 text tokens): at the same (alpha, beta) the tiny Kandinsky 5 moves about 0.13x as
    much as SDXL; (0.70, 4) and (1.30, 4) bring it to SDXL's paper point."""
    def larger(model, **kw):
        return tiny_models.sample_latent(model, conditioning(1, tokens=8),
                                         conditioning(2, tokens=8),
                                         torch.zeros(1, 16, 16, 16), **kw)

    sdxl_change = relative_change(sdxl, sampling["sdxl"], 1.05, 3.0)
    same = relative_change(kandinsky5, larger, 1.05, 3.0) / sdxl_change
    assert 0.08 < same < 0.2, same
    for alpha in (0.70, 1.30):
        matched = relative_change(kandinsky5, larger, alpha, 4.0) / sdxl_change
        assert 0.8 < matched < 1.25, (alpha, matched)


def test_torch_compile_is_one_graph_equal_to_eager(nodes, kandinsky5):
    """TorchCompileModel (inductor) after Skew: the whole model, the marked self-attention
    forwards included, is one graph for the run, equal to eager up to the compiler's
    rounding."""
    assert_one_graph_equal_to_eager(skew(nodes, kandinsky5, alpha=0.7, beta=4.0), kandinsky5,
                                    sample)
