"""Flux (dev, schnell, Kontext) through real ComfyUI sampling: double blocks' joint attention
and single blocks' self-attention, q and k after RoPE as [B, H, L, d] (skip_reshape).

The tiny models have head dim 128 and Flux's RoPE axes; dev is guidance-distilled and runs at
CFG 1 (the cond branch alone), schnell at CFG 2 here so cond and uncond share each call. The
identity and formula cases also run Flux.2 where the host builds it ("flux2" with a guidance
input at CFG 1, "flux2-cfg" without at CFG 2; its own cases: test_family_flux2.py).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from host import tiny_models
from host.family_checks import (
    compare_with_formula,
    image_map,
    literal_stability,
    record_calls,
    relative_change,
)
from host.node_calls import adaptive, record_layers, skew

pytestmark = pytest.mark.host

BLOCKS = 7  # 3 double + 4 single


VARIANTS = ["dev", "schnell", "flux2", "flux2-cfg"]


@pytest.fixture(scope="module")
def flux(comfy_host):
    models = {"dev": tiny_models.tiny_flux_dev(), "schnell": tiny_models.tiny_flux_dev(
        guidance=False)}
    if tiny_models.host_has_flux2():
        models |= {"flux2": tiny_models.tiny_flux2(),
                   "flux2-cfg": tiny_models.tiny_flux2(seed=1, guidance=False)}
    return models


def model_of(flux, variant):
    if variant not in flux:
        pytest.skip(tiny_models.NO_FLUX2)
    return flux[variant]


def sample(model, variant="dev", **kw):
    kw.setdefault("cfg", 2.0 if variant in ("schnell", "flux2-cfg") else 1.0)
    if variant.startswith("flux2"):
        return tiny_models.sample_flux2(model, **kw)
    return tiny_models.sample_flux(model, **kw)


def test_layer_map_at_flux1_block_counts(nodes, comfy_host):
    """19 double + 38 single blocks (Flux.1): indices, kinds, thirds, aliases, and a selection
    counted call by call in real sampling."""
    from hopfield_circulation.families import adapter_for
    from hopfield_circulation.hook.layers import select_layers

    model = tiny_models.tiny_flux_dev(depth=19, single=38, width=64)
    layer_map = adapter_for(model).layer_map
    assert layer_map.family == "flux" and layer_map.last_index == 56
    assert [layer.kind for layer in layer_map.layers] == ["joint"] * 19 + ["single"] * 38
    assert Counter(layer.group for layer in layer_map.layers) == {
        "early": 19, "middle": 19, "late": 19}
    assert select_layers("double", layer_map) == set(range(19))
    assert select_layers("single", layer_map) == set(range(19, 57))
    assert "double blocks 0-18, then the single blocks 19-56" in layer_map.index_hint
    spec = "double, 50-56"
    m, seen = record_layers(skew(nodes, model, layers=spec))
    sample(m, steps=1)
    assert Counter(index for index, _, _ in seen) == {i: 1 for i in range(57)}
    assert {index for index, _, hit in seen if hit} == set(range(19)) | set(range(50, 57))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("alpha, beta", [(1.0, 3.0), (1.05, 0.0)])
def test_identity_settings_are_bit_identical(nodes, flux, variant, alpha, beta):
    model = model_of(flux, variant)
    base = sample(model, variant)
    assert torch.equal(sample(skew(nodes, model, alpha=alpha, beta=beta), variant), base)
    assert torch.equal(sample(adaptive(nodes, model, alpha=alpha, beta=beta), variant), base)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", ["skew", "adaptive"])
def test_every_call_matches_the_float64_formula(nodes, flux, variant, mode):
    model = model_of(flux, variant)
    node = skew if mode == "skew" else adaptive
    alpha, beta = (0.9, 3.0) if mode == "skew" else (1.3, 5.0)
    checked, results = compare_with_formula(node(nodes, model, alpha=alpha, beta=beta),
                                            alpha, beta, adaptive=mode == "adaptive")
    out = sample(checked, variant, batch=2)
    assert torch.isfinite(out).all()
    assert len(results) == BLOCKS * 2  # every block, every step (cond+uncond batched)
    assert max(err for err, _ in results) < 1e-3, results  # relative to the steering change
    assert min(size for _, size in results) > 1e-3  # and there is a change to speak of


@pytest.mark.parametrize("spec, expected", [
    ("double", {0, 1, 2}), ("single", {3, 4, 5, 6}), ("early", {0, 1, 2}), ("middle", {3, 4}),
    ("late", {5, 6}), ("0, 5-6", {0, 5, 6}), ("all", set(range(BLOCKS))),
])
def test_layer_selection_hits_exactly(nodes, flux, spec, expected):
    m, seen = record_layers(skew(nodes, flux["dev"], layers=spec))
    sample(m)
    assert Counter(index for index, _, _ in seen) == {i: 2 for i in range(BLOCKS)}
    assert {index for index, _, hit in seen if hit} == expected
    assert {(index, kind) for index, kind, _ in seen} == {
        (i, "joint" if i < 3 else "single") for i in range(BLOCKS)}


def test_cfg_one_runs_the_cond_branch_alone(nodes, flux):
    model = flux["dev"]
    base = sample(model)
    assert torch.equal(sample(skew(nodes, model, branch="uncond")), base)
    cond = sample(skew(nodes, model, branch="cond"))
    assert not torch.equal(cond, base)
    assert torch.equal(sample(skew(nodes, model, branch="both")), cond)


@pytest.mark.parametrize("order", ["slg_outside", "slg_inside"])
def test_chained_with_skip_layer_guidance(nodes, flux, order):
    """SkipLayerGuidanceDiT's extra pass replaces double block 1 and single block 2 (layer 5):
    those blocks run no attention there, the others are still placed and steered."""
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    def slg(model):
        return SkipLayerGuidanceDiT.execute(model, 3.0, 0.0, 1.0, "1", "2").result[0]

    model = flux["dev"]
    plain = sample(skew(nodes, model, alpha=0.9))
    guided_model = slg(skew(nodes, model, alpha=0.9)) if order == "slg_outside" else skew(
        nodes, slg(model), alpha=0.9)
    m, seen = record_layers(guided_model)
    guided = sample(m)
    assert torch.isfinite(guided).all() and not torch.equal(guided, plain)
    counts = Counter(index for index, _, hit in seen if hit)
    assert counts == {i: 2 if i in (1, 5) else 4 for i in range(BLOCKS)}


def test_existing_block_replace_is_chained_once(nodes, flux):
    ran = []

    def earlier_replace(args, extra, **kwargs):
        ran.append(1)
        return extra["original_block"](args)

    m = flux["dev"].clone()
    m.set_model_patch_replace(earlier_replace, "dit", "single_block", 1)
    base = sample(m)
    n_plain = len(ran)
    ran.clear()
    assert torch.equal(sample(skew(nodes, skew(nodes, m, alpha=1.0), alpha=1.0)), base)
    assert len(ran) == n_plain > 0  # stacked nodes publish the block once
    steered, seen = record_layers(skew(nodes, m))
    sample(steered)
    assert {index for index, _, hit in seen if hit} == set(range(BLOCKS))  # layer 4 placed


def test_kontext_reference_tokens_are_steered_but_off_the_grid(nodes, flux):
    """Kontext appends the reference image's tokens after the image tokens: the whole sequence
    is steered (it matches the formula over it), the token grid is the generated image's."""
    reference = [torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(3))]
    model = flux["dev"]
    m, calls = record_calls(skew(nodes, model, alpha=0.9))
    checked, results = compare_with_formula(m, 0.9, 3.0)
    out = sample(checked, reference=reference)
    base = sample(model, reference=reference)
    assert torch.isfinite(out).all() and not torch.equal(out, base)
    assert not torch.equal(base, sample(model))  # the reference takes part
    assert len(calls) == len(results) == BLOCKS * 2
    for _, q, _, _, text, grid in calls:
        assert (q.shape[-2], text, grid) == (8 + 64 + 4 * 6, 8, (8, 8))
    assert max(err for err, _ in results) < 1e-3


@pytest.mark.parametrize("name", ["longcat", "ovis"])
def test_models_comfyui_builds_as_flux_are_steered_as_flux(nodes, comfy_host, name):
    """LongCat-Image and Ovis-Image (newer ComfyUI builds both as its Flux class) run real
    CFG: every call of both branches is the formula over [text; image], placed as Flux's."""
    if not tiny_models.host_has_flux_class_models():
        pytest.skip(tiny_models.NO_FLUX_CLASS_MODELS)
    model = tiny_models.tiny_flux_class_model(name)
    m, calls = record_calls(skew(nodes, model, alpha=0.9))
    checked, results = compare_with_formula(m, 0.9, 3.0)
    positive, negative = (tiny_models.qwen_image_conditioning(seed) for seed in (1, 2))
    out = tiny_models.sample_latent(checked, positive, negative, torch.zeros(1, 16, 16, 16))
    assert torch.isfinite(out).all() and len(calls) == len(results) == BLOCKS * 2
    assert {(q.shape[0], q.shape[-2], text, grid) for _, q, _, _, text, grid in calls} == {
        (2, 8 + 64, 8, (8, 8))}
    assert max(err for err, _ in results) < 1e-3


def test_input_space_is_refused(nodes, flux):
    with pytest.raises(ValueError, match="double blocks project text and image"):
        skew(nodes, flux["dev"], space="input")


@pytest.mark.parametrize("kontext", [False, True])
def test_probe_against_the_literal_reference(probe_nodes, flux, kontext):
    """One step at CFG 1: each layer's E, r, Align, eta equal the literal L x L measures of its
    call, and the lambda map is the mean over layers of the generated image's tokens only."""
    from hopfield_circulation.probe import find_run, probe_state
    from hopfield_circulation.probe.registry import LayerKey
    from hopfield_circulation.probe.summary import summarise

    reference = [torch.randn(1, 16, 8, 8)] if kontext else None
    probed, handle = probe_nodes.StabilityProbe.execute(
        flux["dev"], "value", 64, 0.0, 1.0, "cond", "all").result
    m, calls = record_calls(probed)
    latent = sample(m, steps=1, reference=reference)
    run = find_run(handle, latent)
    assert len(calls) == BLOCKS
    maps = []
    for layer, q, k, out, text, grid in calls:
        values, lam = literal_stability(q, k, out)
        got = run.sums[LayerKey(layer.index, layer.kind, 0)].double()
        torch.testing.assert_close(got, values, rtol=2e-4, atol=2e-5)
        maps.append(image_map(lam, grid, (16, 16), text))
    summary = summarise(probe_state(handle), run)
    torch.testing.assert_close(summary.maps["all"].double(), torch.stack(maps).mean(0),
                               rtol=1e-4, atol=1e-6)


def test_report_shows_block_groups(probe_nodes, flux):
    probed, handle = probe_nodes.StabilityProbe.execute(
        flux["dev"], "value", 64, 0.0, 1.0, "cond", "all").result
    latent = sample(probed)
    assert torch.equal(latent, sample(flux["dev"]))  # probing never changes the image
    out = probe_nodes.StabilityReport.execute(handle, {"samples": latent}, False, "hc/flux")
    heat, over, early, middle, late, whole, text = out.result
    assert heat.shape == (4, 128, 128, 3)  # early, middle, late and all, of the one sample
    assert all(isinstance(v, float) for v in (early, middle, late, whole))
    assert "FLUX" in text and "early" in text and "late" in text
    chart = out.ui["hopfield_align_chart"][0]
    assert chart["family"] == "flux"
    layers = chart["samples"][0]["layers"]
    assert [(entry["index"], entry["kind"], entry["group"]) for entry in layers] == [
        (0, "joint", "early"), (1, "joint", "early"), (2, "joint", "early"),
        (3, "single", "middle"), (4, "single", "middle"), (5, "single", "late"),
        (6, "single", "late")]
    assert set(chart["samples"][0]["groups"]) == {"early", "middle", "late", "all"}


def test_change_per_call_against_sdxl(flux, sdxl, sampling):
    """The README's starting ranges: on these tiny models the steering change per call
    at (1.05, 3) is ~0.43x SDXL's at its paper point, and (1.10, 3.5) roughly matches it."""
    sdxl_change = relative_change(sdxl, sampling["sdxl"], 1.05, 3.0)
    ratio = relative_change(flux["dev"], sample, 1.05, 3.0) / sdxl_change
    matched = relative_change(flux["dev"], sample, 1.10, 3.5) / sdxl_change
    assert 0.3 < ratio < 0.6, ratio
    assert 0.8 < matched < 1.25, matched


def test_newer_host_block_options_are_read(flux):
    """Hosts newer than 0.3.64 set block_type/block_index (and img_slice in single blocks)
    themselves: placement reads them when our own patch did not run."""
    from hopfield_circulation.families import adapter_for

    adapter = adapter_for(flux["dev"])
    latent = (1, 16, 16, 15)  # odd width: padded to 8 x 8 tokens
    single = adapter.place({"block_type": "single", "block_index": 2, "img_slice": [8, 88]},
                           88, 88, latent)
    assert (single.layer.index, single.layer.kind, single.text_tokens, single.token_grid) == (
        5, "single", 8, (8, 8))
    double = adapter.place({"block_type": "double", "block_index": 0}, 72, 72, latent)
    assert (double.layer.index, double.text_tokens) == (0, 8)  # [text; image] without refs
    assert adapter.place({"block_type": "double", "block_index": 9}, 72, 72, latent) is None
    assert adapter.place({}, 72, 72, latent) is None  # no block known: left alone
    assert adapter.place({"block_type": "double", "block_index": 0}, 40, 40, latent) is None
