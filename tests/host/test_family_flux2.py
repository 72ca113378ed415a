"""Flux.2 through real ComfyUI sampling, on hosts that build it (ComfyUI's Flux class with
``image_model="flux2"``; 0.3.64 predates it, 0.33.0 has it): the Flux adapter's double and
single blocks, one token per latent pixel, text padded to 512 tokens by the host, reference
images appended by index.

The tiny model has Flux.2's layout at tiny width (head dim 128, four RoPE axes, shared
modulation, no biases) and a guidance input: it runs at CFG 1, the cond branch alone, as
Flux.2 dev. The identity and float64-formula cases run in test_family_flux.py, with and
without a guidance input.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from host import tiny_models
from host.family_checks import (
    assert_one_graph_equal_to_eager,
    compare_with_formula,
    image_map,
    literal_stability,
    record_calls,
    relative_change,
)
from host.node_calls import record_layers, skew

pytestmark = pytest.mark.host

BLOCKS = 7  # 3 double + 4 single
TEXT = 512  # model_base.Flux2 pads the conditioning to 512 tokens
GRID = (8, 8)  # an 8 x 8 latent, one token per latent pixel


@pytest.fixture(scope="module")
def flux2_host(comfy_host):
    if not tiny_models.host_has_flux2():
        pytest.skip(tiny_models.NO_FLUX2)


@pytest.fixture(scope="module")
def flux2(flux2_host):
    return tiny_models.tiny_flux2()


def sample(model, **kw):
    return tiny_models.sample_flux2(model, cfg=1.0, **kw)


def references(*sizes):
    gen = torch.Generator().manual_seed(3)
    return [torch.randn(1, 128, h, w, generator=gen) for h, w in sizes]


def test_layer_map_at_flux2_dev_block_counts(nodes, flux2_host):
    """8 double + 48 single blocks (Flux.2 dev): indices, kinds, thirds, aliases, the label,
    and a selection counted call by call in real sampling."""
    from hopfield_circulation.families import adapter_for
    from hopfield_circulation.hook.layers import select_layers

    model = tiny_models.tiny_flux2(depth=8, single=48, width=64)
    layer_map = adapter_for(model).layer_map
    assert layer_map.family == "flux" and layer_map.last_index == 55
    assert [layer.kind for layer in layer_map.layers] == ["joint"] * 8 + ["single"] * 48
    assert Counter(layer.group for layer in layer_map.layers) == {
        "early": 19, "middle": 19, "late": 18}
    assert select_layers("double", layer_map) == set(range(8))
    assert select_layers("single", layer_map) == set(range(8, 56))
    assert "Flux.2 layers are the double blocks 0-7, then the single blocks 8-55" in (
        layer_map.index_hint)
    m, seen = record_layers(skew(nodes, model, layers="double, 50-55"))
    sample(m, steps=1)
    assert Counter(index for index, _, _ in seen) == {i: 1 for i in range(56)}
    assert {index for index, _, hit in seen if hit} == set(range(8)) | set(range(50, 56))


def test_reference_images_are_steered_but_off_the_grid(nodes, flux2):
    """Two reference images (Flux.2 edits by index): their tokens follow the image's, the
    whole sequence is steered (it matches the formula over it), the grid is the image's."""
    refs = references((8, 8), (4, 6))
    model = flux2
    m, calls = record_calls(skew(nodes, model, alpha=0.9))
    checked, results = compare_with_formula(m, 0.9, 3.0)
    out = sample(checked, reference=refs)
    base = sample(model, reference=refs)
    assert torch.isfinite(out).all() and not torch.equal(out, base)
    assert not torch.equal(base, sample(model))  # the references take part
    assert len(calls) == len(results) == BLOCKS * 2
    for _, q, _, _, text, grid in calls:
        assert (q.shape[-2], text, grid) == (TEXT + 64 + 64 + 24, TEXT, GRID)
    assert max(err for err, _ in results) < 1e-3


@pytest.mark.parametrize("with_reference", [False, True])
def test_probe_against_the_literal_reference(probe_nodes, flux2, with_reference):
    """One step at CFG 1: each layer's E, r, Align, eta equal the literal L x L measures of its
    call, and the lambda map is the mean over layers of the generated image's tokens only, one
    per latent pixel."""
    from hopfield_circulation.probe import find_run, probe_state
    from hopfield_circulation.probe.registry import LayerKey
    from hopfield_circulation.probe.summary import summarise

    refs = references((8, 8)) if with_reference else None
    probed, handle = probe_nodes.StabilityProbe.execute(
        flux2, "value", 64, 0.0, 1.0, "cond", "all").result
    m, calls = record_calls(probed)
    run = find_run(handle, sample(m, steps=1, reference=refs))
    assert len(calls) == BLOCKS
    maps = []
    for layer, q, k, out, text, grid in calls:
        assert (text, grid) == (TEXT, GRID)
        values, lam = literal_stability(q, k, out)
        got = run.sums[LayerKey(layer.index, layer.kind, 0)].double()
        torch.testing.assert_close(got, values, rtol=2e-4, atol=2e-5)
        maps.append(image_map(lam, grid, GRID, text))
    summary = summarise(probe_state(handle), run)
    torch.testing.assert_close(summary.maps["all"].double(), torch.stack(maps).mean(0),
                               rtol=1e-4, atol=1e-6)


def test_change_per_call_against_sdxl(flux2, sdxl, sampling):
    """The README's starting ranges, on a 32 x 32 latent (1,024 image tokens beside the 512
    text tokens; from there on the ratio holds, where an 8 x 8 latent's 64 image tokens gave
    0.15x): the steering change per call at (1.05, 3) is about 0.6x SDXL's at its paper
    point, and (1.10, 3.5) moves about 1.3x as much as SDXL there."""
    def larger(model, **kw):
        return sample(model, size=32, **kw)

    sdxl_change = relative_change(sdxl, sampling["sdxl"], 1.05, 3.0)
    ratio = relative_change(flux2, larger, 1.05, 3.0) / sdxl_change
    stronger = relative_change(flux2, larger, 1.10, 3.5) / sdxl_change
    assert 0.4 < ratio < 0.7, ratio
    assert 1.0 < stronger < 1.6, stronger


def test_torch_compile_is_one_graph_equal_to_eager(nodes, flux2):
    """TorchCompileModel (inductor) after Skew: the whole DiT is one graph for the run, and the
    compiled sample is the eager one up to the compiler's rounding."""
    assert_one_graph_equal_to_eager(skew(nodes, flux2, alpha=0.9), flux2, sample)
