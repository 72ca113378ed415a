"""Chroma and Chroma Radiance (comfy.ldm.chroma, Flux's blocks without a guidance input) through
real ComfyUI sampling at CFG 2. Radiance works in pixel space with 16 x 16 pixel patches."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from host import tiny_models
from host.family_checks import (
    assert_identity_settings_bit_identical,
    compare_with_formula,
    image_map,
    literal_stability,
    record_calls,
    relative_change,
)
from host.node_calls import adaptive, record_layers, skew

pytestmark = pytest.mark.host

BLOCKS = 6  # 2 double + 4 single


@pytest.fixture(scope="module")
def chroma(comfy_host):
    return {"chroma": tiny_models.tiny_chroma(),
            "radiance": tiny_models.tiny_chroma(radiance=True)}


def sample(model, variant="chroma", **kw):
    if variant == "radiance":
        return tiny_models.sample_chroma_radiance(model, **kw)
    return tiny_models.sample_flux(model, **kw)


def test_layer_map(chroma):
    from hopfield_circulation.families import adapter_for

    for variant in chroma:
        layer_map = adapter_for(chroma[variant]).layer_map
        assert layer_map.family == "chroma"
        assert [(layer.index, layer.kind, layer.group) for layer in layer_map.layers] == [
            (0, "joint", "early"), (1, "joint", "early"), (2, "single", "middle"),
            (3, "single", "middle"), (4, "single", "late"), (5, "single", "late")]
        assert layer_map.aliases == {"double": {0, 1}, "single": {2, 3, 4, 5}}


@pytest.mark.parametrize("variant", ["chroma", "radiance"])
def test_identity_settings_are_bit_identical(nodes, chroma, variant):
    model = chroma[variant]
    assert_identity_settings_bit_identical(nodes, model, lambda m: sample(m, variant))


@pytest.mark.parametrize("variant", ["chroma", "radiance"])
@pytest.mark.parametrize("mode", ["skew", "adaptive"])
def test_every_call_matches_the_float64_formula(nodes, chroma, variant, mode):
    node = skew if mode == "skew" else adaptive
    alpha, beta = (1.1, 3.0) if mode == "skew" else (1.3, 5.0)
    steered = node(nodes, chroma[variant], alpha=alpha, beta=beta)
    m, calls = record_calls(steered)
    checked, results = compare_with_formula(m, alpha, beta, adaptive=mode == "adaptive")
    out = sample(checked, variant)
    assert torch.isfinite(out).all()
    assert len(results) == len(calls) == BLOCKS * 2
    assert max(err for err, _ in results) < 1e-3, results
    grid = (8, 8) if variant == "chroma" else (4, 4)  # 16 latent / 2, or 64 pixels / 16
    assert {(text, g) for *_, text, g in calls} == {(8, grid)}


@pytest.mark.parametrize("spec, expected", [
    ("double", {0, 1}), ("single", {2, 3, 4, 5}), ("middle", {2, 3}), ("1-2", {1, 2}),
])
def test_layer_selection_hits_exactly(nodes, chroma, spec, expected):
    m, seen = record_layers(skew(nodes, chroma["chroma"], layers=spec))
    sample(m)
    assert Counter(index for index, _, _ in seen) == {i: 2 for i in range(BLOCKS)}
    assert {index for index, _, hit in seen if hit} == expected


def test_chained_with_skip_layer_guidance(nodes, chroma):
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    model = chroma["chroma"]
    plain = sample(skew(nodes, model))
    guided_model = SkipLayerGuidanceDiT.execute(skew(nodes, model), 3.0, 0.0, 1.0, "0",
                                                "3").result[0]
    m, seen = record_layers(guided_model)
    guided = sample(m)
    assert torch.isfinite(guided).all() and not torch.equal(guided, plain)
    # SLG's extra cond pass skips double block 0 and single block 3 (layer 5)
    assert Counter(index for index, _, hit in seen if hit) == {
        i: 2 if i in (0, 5) else 4 for i in range(BLOCKS)}


def test_probe_against_the_literal_reference(comfy_host, chroma, tmp_path):
    import folder_paths
    from hopfield_circulation.nodes import probe_nodes
    from hopfield_circulation.probe import find_run, probe_state
    from hopfield_circulation.probe.registry import LayerKey
    from hopfield_circulation.probe.summary import summarise

    folder_paths.set_output_directory(str(tmp_path))
    probed, handle = probe_nodes.StabilityProbe.execute(
        chroma["chroma"], "value", 64, 0.0, 1.0, "cond", "all").result
    m, calls = record_calls(probed)
    latent = sample(m, steps=1)
    run = find_run(handle, latent)
    maps = []
    for layer, q, k, out, text, grid in calls:
        values, lam = literal_stability(q, k, out)
        cond = slice(1, 2)  # uncond first in the batched call; the probe records cond
        got = run.sums[LayerKey(layer.index, layer.kind, 0)].double()
        torch.testing.assert_close(got, values[:, cond], rtol=2e-4, atol=2e-5)
        maps.append(image_map(lam[cond], grid, (16, 16), text))
    summary = summarise(probe_state(handle), run)
    torch.testing.assert_close(summary.maps["all"].double(), torch.stack(maps).mean(0),
                               rtol=1e-4, atol=1e-6)
    report = probe_nodes.StabilityReport.execute(handle, {"samples": latent}, False, "hc/c")
    assert report.result[0].shape == (4, 128, 128, 3)
    assert report.ui["hopfield_align_chart"][0]["family"] == "chroma"


def test_change_per_call_against_sdxl(chroma, sdxl, sampling):
    """The README's starting ranges: ~0.25x SDXL's change at (1.05, 3); (1.15, 4) roughly
    matches it."""
    sdxl_change = relative_change(sdxl, sampling["sdxl"], 1.05, 3.0)
    ratio = relative_change(chroma["chroma"], sample, 1.05, 3.0) / sdxl_change
    matched = relative_change(chroma["chroma"], sample, 1.15, 4.0) / sdxl_change
    assert 0.15 < ratio < 0.35, ratio
    assert 0.8 < matched < 1.25, matched
