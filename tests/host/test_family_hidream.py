"""HiDream (I1; E1's side-by-side reference) through real ComfyUI sampling.

The tiny model has the real layout at tiny width: head dim 128, qk-norm and RoPE, routed
experts, 2 double and 4 single blocks; the image's tokens come first, the text (T5 and one
Llama layer per block) after them. No host names these blocks to attention: each block's
processor is wrapped by an object patch (families/hidream.py), so the tests also check that the
patch leaves the model as it was and chains a processor another pack put there.
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
from host.node_calls import adaptive, record_layers, skew, steered_layers

pytestmark = pytest.mark.host

BLOCKS = 6  # 2 double, 4 single
IMAGE, TEXT = 30, 24  # a 5 x 6 token grid; 8 T5 tokens, then 8 + 8 of two Llama layers


@pytest.fixture(scope="module")
def hidream(comfy_host):
    return tiny_models.tiny_hidream()


def sample(model, batch=1, height=10, width=12, reference=None, **kw):
    """A 10 x 12 latent: a 5 x 6 token grid. ``reference``: E1's input image latent."""
    return tiny_models.sample_latent(
        model, tiny_models.hidream_conditioning(1, batch, reference=reference),
        tiny_models.hidream_conditioning(2, batch, reference=reference),
        torch.zeros(batch, 16, height, width), **kw)


def test_layer_map_at_the_real_block_counts(nodes, comfy_host):
    from hopfield_circulation.families import adapter_for

    model = tiny_models.tiny_hidream(double=16, single=32, head_dim=32)
    layer_map = adapter_for(model).layer_map
    assert layer_map.family == "hidream"
    assert [layer.index for layer in layer_map.layers] == list(range(48))
    assert Counter(layer.kind for layer in layer_map.layers) == {"joint": 16, "single": 32}
    assert Counter(layer.group for layer in layer_map.layers) == {
        "early": 16, "middle": 16, "late": 16}
    assert layer_map.aliases == {"double": frozenset(range(16)),
                                 "single": frozenset(range(16, 48))}
    assert ("HiDream layers are the double blocks 0-15, then the single blocks 16-47"
            in layer_map.index_hint)
    counts, steered = steered_layers(nodes, model, sample, "late, 3", steps=1)
    assert counts == {i: 1 for i in range(48)}
    assert steered == {3} | set(range(32, 48))


def test_identity_settings_are_bit_identical_and_the_model_stays_unpatched(nodes, hidream):
    """α = 1 or β = 0 give the unpatched model's sample bit for bit, and after a steered run
    the model itself samples as before (the object patches are the clone's alone)."""
    base = assert_identity_settings_bit_identical(nodes, hidream, sample)
    assert not torch.equal(sample(skew(nodes, hidream)), base)
    assert torch.equal(sample(hidream), base)
    assert not hidream.object_patches


@pytest.mark.parametrize("mode", ["skew", "adaptive"])
def test_every_block_matches_the_float64_formula(nodes, hidream, mode):
    """Batch 2 at CFG: every double and single block's call is the formula over the whole
    sequence [image; text], placed on the image's grid at the head of the sequence."""
    node = skew if mode == "skew" else adaptive
    alpha, beta = (1.05, 3.0) if mode == "skew" else (1.2, 5.0)
    m, calls = record_calls(node(nodes, hidream, alpha=alpha, beta=beta))
    checked, results = compare_with_formula(m, alpha, beta, adaptive=mode == "adaptive")
    out = sample(checked, batch=2)
    assert torch.isfinite(out).all() and not torch.equal(out, sample(hidream, batch=2))
    assert len(results) == len(calls) == BLOCKS * 2
    assert max(err for err, _ in results) < 1e-3, results
    assert {(q.shape[-2], text, grid) for _, q, _, _, text, grid in calls} == {
        (IMAGE + TEXT, 0, (5, 6))}
    assert Counter(layer.kind for layer, *_ in calls) == {"joint": 4, "single": 8}


@pytest.mark.parametrize("spec, expected", [
    ("double", {0, 1}), ("single", {2, 3, 4, 5}), ("early", {0, 1}), ("0, 5", {0, 5}),
])
def test_layer_selection_hits_exactly(nodes, hidream, spec, expected):
    counts, steered = steered_layers(nodes, hidream, sample, spec)
    assert counts == {i: 2 for i in range(BLOCKS)}
    assert steered == expected


def test_e1_reference_columns_are_steered_but_off_the_map(nodes, hidream):
    """HiDream-E1 puts its input image to the right of the latent: each row of image tokens
    holds the generated row, then the reference's. All of it is steered (the formula over the
    whole sequence); the grid names the generated image's 6 columns of each 12."""
    reference = torch.randn(1, 16, 10, 12, generator=torch.Generator().manual_seed(3))
    m, calls = record_calls(skew(nodes, hidream))
    checked, results = compare_with_formula(m, 1.05, 3.0)
    out = sample(checked, reference=reference)
    base = sample(hidream, reference=reference)
    assert torch.isfinite(out).all() and not torch.equal(out, base)
    assert not torch.equal(base, sample(hidream))  # the reference takes part
    assert len(calls) == len(results) == BLOCKS * 2
    assert {(q.shape[-2], text, grid) for _, q, _, _, text, grid in calls} == {
        (2 * IMAGE + TEXT, 0, (5, 6, 12))}
    assert max(err for err, _ in results) < 1e-3


def test_a_processor_another_pack_put_there_is_chained_once(nodes, hidream):
    """An object patch on a block's processor made before ours still runs, once per call
    however many of our nodes are stacked, and every block is still placed."""
    from hopfield_circulation.families.hidream import processor_path

    ran = []
    path = processor_path("single", 1)
    original = hidream.get_model_object(path)

    def earlier_processor(attn, *args, **kwargs):
        ran.append(1)
        return original(attn, *args, **kwargs)

    m = hidream.clone()
    m.add_object_patch(path, earlier_processor)
    sample(m)
    n_plain = len(ran)
    ran.clear()
    stacked, seen = record_layers(skew(nodes, skew(nodes, m, alpha=0.95)))
    assert stacked.object_patches[path].__wrapped__ is earlier_processor
    sample(stacked)
    assert len(ran) == n_plain > 0
    assert Counter(index for index, _, hit in seen if hit) == {i: 2 for i in range(BLOCKS)}


def test_blocks_without_a_processor_are_refused_before_anything_is_patched(nodes, hidream):
    """A host whose HiDream blocks call attention without the processor attribute (here one
    block's taken away) gives no call a block: the nodes refuse the model, saying where, and
    the adapter patches no block before it finds out."""
    from hopfield_circulation.families import UnsupportedModelError, adapter_for
    from hopfield_circulation.families.hidream import processor_path

    path = processor_path("single", 2)
    m = hidream.clone()
    m.add_object_patch(path, None)
    said = r"nothing to wrap at diffusion_model\.single_stream_blocks\.2\.block\.attn1\."
    with pytest.raises(UnsupportedModelError, match=said):
        skew(nodes, m)
    with pytest.raises(UnsupportedModelError, match=said):
        adapter_for(m).install(m)
    assert list(m.object_patches) == [path]


def test_paper_point_says_there_is_none_for_the_model(nodes, hidream):
    assert_paper_point_names(nodes, hidream, 0.96, 3.0, "HiDream")


def test_input_space_is_refused_with_the_reason(nodes, hidream):
    with pytest.raises(ValueError, match="HiDream's double blocks project text and image"):
        skew(nodes, hidream, space="input")


@pytest.mark.parametrize("reference", [False, True], ids=["i1", "e1"])
def test_probe_against_the_literal_reference(probe_nodes, hidream, reference):
    """The Probe's measures and lambda map against the literal reference (family_checks): the
    image's tokens first; E1's map keeps the generated image's half of each row."""
    image = torch.randn(1, 16, 10, 12, generator=torch.Generator().manual_seed(3))
    assert_probe_matches_literal(
        probe_nodes, hidream, sample, blocks=BLOCKS, family="hidream", latent_hw=(10, 12),
        text=0, grid=(5, 6, 12) if reference else (5, 6),
        reference=image if reference else None)


def test_change_per_call_against_sdxl(hidream, sdxl, sampling):
    """The README's starting range, on a 16 x 16 latent (an 8 x 8 token grid, as the other
    DiT rows): at the same (alpha, beta) HiDream moves about 0.6x as much as SDXL; (0.92, 3)
    and (1.08, 3) bring it to SDXL's paper point."""
    def larger(model, **kw):
        return sample(model, height=16, width=16, **kw)

    sdxl_change = relative_change(sdxl, sampling["sdxl"], 1.05, 3.0)
    same = relative_change(hidream, larger, 1.05, 3.0) / sdxl_change
    assert 0.45 < same < 0.75, same
    for alpha in (0.92, 1.08):
        matched = relative_change(hidream, larger, alpha, 3.0) / sdxl_change
        assert 0.85 < matched < 1.15, (alpha, matched)


def test_torch_compile_is_one_graph_equal_to_eager(nodes, comfy_host):
    """TorchCompileModel (inductor) after Skew: the whole DiT is one graph for the run (with
    plain feed-forwards: the routed experts' data-dependent indexing breaks the host's own
    graph, steered or not), and the compiled sample is the eager one up to the compiler's
    rounding."""
    model = tiny_models.tiny_hidream(experts=0)
    assert_one_graph_equal_to_eager(skew(nodes, model), model, sample)
