"""Mage-Flow (newer ComfyUI: Qwen-Image's joint blocks on a Flux.2 latent, one token per
latent pixel) through real ComfyUI sampling, on hosts that build it (0.33.0; 0.3.64 predates
it and the cases skip there with that reason).

The tiny model has the real layout at tiny width: head dim 128, qk-norm, RoPE on the image
only, 4 blocks. The host names the blocks; the Qwen-Image adapter places the calls.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from host import tiny_models
from host.family_checks import (
    assert_identity_settings_bit_identical,
    assert_paper_point_names,
    assert_probe_matches_literal,
    compare_with_formula,
    record_calls,
    relative_change,
)
from host.node_calls import adaptive, skew, steered_layers

pytestmark = pytest.mark.host

BLOCKS = 4
TEXT, IMAGE = 8, 30  # 8 text tokens; a 5 x 6 latent, one token per latent pixel


@pytest.fixture(scope="module")
def mage_flow(comfy_host):
    if not tiny_models.host_has_mage_flow():
        pytest.skip(tiny_models.NO_MAGE_FLOW)
    return tiny_models.tiny_mage_flow()


def sample(model, batch=1, height=5, width=6, reference=None, **kw):
    return tiny_models.sample_latent(
        model, tiny_models.qwen_image_conditioning(1, batch, reference=reference),
        tiny_models.qwen_image_conditioning(2, batch, reference=reference),
        torch.zeros(batch, 128, height, width), **kw)


def test_layer_map_at_the_real_block_count(nodes, mage_flow):
    from hopfield_circulation.families import adapter_for

    model = tiny_models.tiny_mage_flow(layers=12, width=64)
    layer_map = adapter_for(model).layer_map
    assert layer_map.family == "mage-flow" and layer_map.aliases == {}
    assert [layer.index for layer in layer_map.layers] == list(range(12))
    assert Counter(layer.group for layer in layer_map.layers) == {
        "early": 4, "middle": 4, "late": 4}
    assert "Mage-Flow layers are the transformer blocks 0-11" in layer_map.index_hint
    counts, steered = steered_layers(nodes, model, sample, "late, 3", steps=1)
    assert counts == {i: 1 for i in range(12)}
    assert steered == {3, 8, 9, 10, 11}


def test_identity_settings_are_bit_identical(nodes, mage_flow):
    assert_identity_settings_bit_identical(nodes, mage_flow, sample)


@pytest.mark.parametrize("mode", ["skew", "adaptive"])
def test_every_block_matches_the_float64_formula(nodes, mage_flow, mode):
    """Batch 2 at CFG: every block's joint call is the formula over [text; image], placed on
    the latent's own grid (patch size 1)."""
    node = skew if mode == "skew" else adaptive
    alpha, beta = (0.95, 3.0) if mode == "skew" else (1.2, 5.0)
    m, calls = record_calls(node(nodes, mage_flow, alpha=alpha, beta=beta))
    checked, results = compare_with_formula(m, alpha, beta, adaptive=mode == "adaptive")
    out = sample(checked, batch=2)
    assert torch.isfinite(out).all() and not torch.equal(out, sample(mage_flow, batch=2))
    assert len(results) == len(calls) == BLOCKS * 2
    assert max(err for err, _ in results) < 1e-3, results
    assert {(q.shape[-2], text, grid) for _, q, _, _, text, grid in calls} == {
        (TEXT + IMAGE, TEXT, (5, 6))}


def test_reference_latents_are_steered_but_off_the_grid(nodes, mage_flow):
    reference = [torch.randn(1, 128, 4, 4, generator=torch.Generator().manual_seed(3))]
    m, calls = record_calls(skew(nodes, mage_flow, alpha=0.95))
    checked, results = compare_with_formula(m, 0.95, 3.0)
    out = sample(checked, reference=reference)
    base = sample(mage_flow, reference=reference)
    assert torch.isfinite(out).all() and not torch.equal(out, base)
    assert not torch.equal(base, sample(mage_flow))  # the reference takes part
    assert len(calls) == len(results) == BLOCKS * 2
    assert {(q.shape[-2], text, grid) for _, q, _, _, text, grid in calls} == {
        (TEXT + IMAGE + 16, TEXT, (5, 6))}
    assert max(err for err, _ in results) < 1e-3


def test_paper_point_and_input_space(nodes, mage_flow):
    assert_paper_point_names(nodes, mage_flow, 0.95, 3.0, "Mage-Flow")
    with pytest.raises(ValueError, match="Mage-Flow projects text and image"):
        skew(nodes, mage_flow, space="input")


def test_probe_against_the_literal_reference(probe_nodes, mage_flow):
    assert_probe_matches_literal(probe_nodes, mage_flow, sample, blocks=BLOCKS,
                                 family="mage-flow", latent_hw=(5, 6), text=TEXT, grid=(5, 6))


def test_change_per_call_against_sdxl(mage_flow, sdxl, sampling):
    """The README's starting range, on an 8 x 8 latent (8 x 8 tokens, as the other DiT rows):
    at the same (alpha, beta) Mage-Flow moves about as much as SDXL."""
    def larger(model, **kw):
        return sample(model, height=8, width=8, **kw)

    sdxl_change = relative_change(sdxl, sampling["sdxl"], 1.05, 3.0)
    for alpha in (1.05, 0.95):
        ratio = relative_change(mage_flow, larger, alpha, 3.0) / sdxl_change
        assert 0.85 < ratio < 1.15, (alpha, ratio)


def test_torch_compile_is_one_graph(nodes, mage_flow):
    """TorchCompileModel (inductor) after Skew: the whole DiT is one graph for the run, with
    no graph break, and the steering survives it. Compiled samples differ from eager ones by
    the host's own rounding (Mage-Flow rounds its timestep to bf16, which the compiled graph
    computes differently, steered or not), so the steered run is held to that difference."""
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    def compiled_run(model):
        compiled = TorchCompileModel.execute(model, "inductor").result[0]
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        try:
            out = sample(compiled, steps=3)
            counters = torch._dynamo.utils.counters
            return out, counters["stats"]["unique_graphs"], dict(counters["graph_break"])
        finally:
            torch._dynamo.reset()

    steered = skew(nodes, mage_flow, alpha=0.95)
    plain, _, _ = compiled_run(mage_flow)
    out, graphs, breaks = compiled_run(steered)
    assert graphs == 1 and not breaks
    host_rounding = (plain - sample(mage_flow, steps=3)).abs().max()
    assert (out - sample(steered, steps=3)).abs().max() <= 1.5 * host_rounding + 1e-3
    assert (out - plain).abs().max() > 1e-2
