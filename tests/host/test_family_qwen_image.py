"""Qwen-Image (and Qwen-Image-Edit's reference tokens) through real ComfyUI sampling: joint
attention through the masked entry point, q, k, v as [B, L, H*d], a 5-D latent [B, 16, 1, H, W]
as KSampler makes it. Calls with no mask or an attend-everywhere one are steered; a real mask
is left alone."""

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

BLOCKS = 6


@pytest.fixture(scope="module")
def qwen(comfy_host):
    return tiny_models.tiny_qwen_image()


sample = tiny_models.sample_qwen_image


def test_layer_map_at_the_real_block_count(nodes, comfy_host):
    from hopfield_circulation.families import adapter_for

    model = tiny_models.tiny_qwen_image(layers=60, width=64)
    layer_map = adapter_for(model).layer_map
    assert layer_map.family == "qwen-image" and layer_map.aliases == {}
    assert [layer.index for layer in layer_map.layers] == list(range(60))
    assert {layer.kind for layer in layer_map.layers} == {"joint"}
    assert Counter(layer.group for layer in layer_map.layers) == {
        "early": 20, "middle": 20, "late": 20}
    assert "transformer blocks 0-59" in layer_map.index_hint
    m, seen = record_layers(skew(nodes, model, layers="late, 3"))
    sample(m, steps=1)
    assert Counter(index for index, _, _ in seen) == {i: 1 for i in range(60)}
    assert {index for index, _, hit in seen if hit} == {3} | set(range(40, 60))


def test_identity_settings_are_bit_identical(nodes, qwen):
    base = assert_identity_settings_bit_identical(nodes, qwen, sample)
    assert base.shape == (1, 16, 1, 16, 16)


@pytest.mark.parametrize("mode", ["skew", "adaptive"])
def test_every_call_matches_the_float64_formula(nodes, qwen, mode):
    node = skew if mode == "skew" else adaptive
    alpha, beta = (0.95, 3.0) if mode == "skew" else (1.3, 5.0)
    m, calls = record_calls(node(nodes, qwen, alpha=alpha, beta=beta))
    checked, results = compare_with_formula(m, alpha, beta, adaptive=mode == "adaptive")
    assert torch.isfinite(sample(checked, batch=2)).all()
    assert len(results) == len(calls) == BLOCKS * 2
    assert max(err for err, _ in results) < 1e-3, results
    assert {(text, grid) for *_, text, grid in calls} == {(8, (8, 8))}


@pytest.mark.parametrize("spec, expected", [
    ("early", {0, 1}), ("late", {4, 5}), ("0, 3-4", {0, 3, 4}),
])
def test_layer_selection_hits_exactly(nodes, qwen, spec, expected):
    m, seen = record_layers(skew(nodes, qwen, layers=spec))
    sample(m)
    assert Counter(index for index, _, _ in seen) == {i: 2 for i in range(BLOCKS)}
    assert {index for index, _, hit in seen if hit} == expected


def _with_mask(model, mask):
    """Every attention call gets ``mask`` as the masked entry point's fifth argument (0.3.64's
    Qwen-Image passes None there), ahead of our hook and the host's attention alike. Later
    hosts hand q heads first (skip_reshape)."""
    inner = model.model_options["transformer_options"]["optimized_attention_override"]

    def pass_mask(func, *args, **kwargs):
        n = args[0].shape[-2 if kwargs.get("skip_reshape") else 1]
        return inner(func, *args[:4], mask(n, args[0]), *args[5:], **kwargs)

    model.model_options["transformer_options"]["optimized_attention_override"] = pass_mask
    return model


@pytest.mark.parametrize("kind", ["all True", "zero bias", "real mask"])
def test_masks(nodes, qwen, kind):
    def mask(n, q):
        if kind == "all True":
            return torch.ones(n, n, dtype=torch.bool)
        bias = torch.zeros(q.shape[0], 1, n, n, dtype=q.dtype)
        if kind == "real mask":
            bias[..., -1] = -float("inf")  # no token may attend to the last one
        return bias

    plain = sample(skew(nodes, qwen))
    m, seen = record_layers(skew(nodes, qwen))
    out = sample(_with_mask(m, mask))
    if kind == "real mask":
        assert seen == []  # nothing placed: the host's masked attention as it is
        unpatched = qwen.clone()
        unpatched.model_options["transformer_options"]["optimized_attention_override"] = (
            lambda func, *a, **kw: func(
                *a[:4], mask(a[0].shape[-2 if kw.get("skip_reshape") else 1], a[0]), *a[5:],
                **kw))
        assert torch.equal(out, sample(unpatched))
    else:
        assert len(seen) == BLOCKS * 2 and all(hit for *_, hit in seen)
        torch.testing.assert_close(out, plain, rtol=1e-4, atol=1e-4)


def test_edit_reference_tokens_are_steered_but_off_the_grid(nodes, qwen):
    reference = [torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(3))]
    m, calls = record_calls(skew(nodes, qwen, alpha=0.95))
    checked, results = compare_with_formula(m, 0.95, 3.0)
    out = sample(checked, reference=reference)
    assert torch.isfinite(out).all() and not torch.equal(out, sample(qwen, reference=reference))
    assert len(calls) == len(results) == BLOCKS * 2
    for _, q, _, _, text, grid in calls:
        assert (q.shape[-2], text, grid) == (8 + 64 + 16, 8, (8, 8))
    assert max(err for err, _ in results) < 1e-3


def test_layered_latents_are_steered_whole_and_gridded_by_their_first_frame(nodes, qwen):
    """Qwen-Image-Layered's latent [B, 16, layers + 1, H, W] (hosts newer than 0.3.64): every
    frame's tokens follow the text, are steered with the sequence (it matches the formula over
    it), and the probe's grid is the first frame's."""
    import comfy_extras.nodes_qwen

    if not hasattr(comfy_extras.nodes_qwen, "EmptyQwenImageLayeredLatentImage"):
        pytest.skip("this host's Qwen-Image takes one frame (ComfyUI 0.3.64; 0.33.0 has "
                    "Qwen-Image-Layered)")
    latent = torch.zeros(1, 16, 3, 16, 16)

    def layered(model):
        return tiny_models.sample_latent(model, tiny_models.qwen_image_conditioning(1),
                                         tiny_models.qwen_image_conditioning(2), latent)

    m, calls = record_calls(skew(nodes, qwen, alpha=0.95))
    checked, results = compare_with_formula(m, 0.95, 3.0)
    out = layered(checked)
    assert out.shape == latent.shape and torch.isfinite(out).all()
    assert not torch.equal(out, layered(qwen))
    assert len(calls) == len(results) == BLOCKS * 2
    for _, q, _, _, text, grid in calls:
        assert (q.shape[-2], text, grid) == (8 + 3 * 64, 8, (8, 8))
    assert max(err for err, _ in results) < 1e-3


def test_input_space_is_refused(nodes, qwen):
    with pytest.raises(ValueError, match="Qwen-Image projects text and image"):
        skew(nodes, qwen, space="input")


def test_probe_against_the_literal_reference(comfy_host, qwen, tmp_path):
    import folder_paths
    from hopfield_circulation.nodes import probe_nodes
    from hopfield_circulation.probe import find_run, probe_state
    from hopfield_circulation.probe.registry import LayerKey
    from hopfield_circulation.probe.summary import summarise

    folder_paths.set_output_directory(str(tmp_path))
    probed, handle = probe_nodes.StabilityProbe.execute(
        qwen, "value", 64, 0.0, 1.0, "cond", "all").result
    m, calls = record_calls(probed)
    latent = sample(m, steps=1)
    run = find_run(handle, latent)
    cond = slice(1, 2)  # uncond first in the batched call; the probe records cond
    maps = []
    for layer, q, k, out, text, grid in calls:
        values, lam = literal_stability(q, k, out)
        got = run.sums[LayerKey(layer.index, layer.kind, 0)].double()
        torch.testing.assert_close(got, values[:, cond], rtol=2e-4, atol=2e-5)
        maps.append(image_map(lam[cond], grid, (16, 16), text))
    summary = summarise(probe_state(handle), run)
    torch.testing.assert_close(summary.maps["all"].double(), torch.stack(maps).mean(0),
                               rtol=1e-4, atol=1e-6)
    report = probe_nodes.StabilityReport.execute(handle, {"samples": latent}, True, "hc/qwen")
    heat, _, early, middle, late, whole, text = report.result
    assert heat.shape == (4, 128, 128, 3) and "QWEN-IMAGE" in text and "Saved: " in text
    assert report.ui["hopfield_align_chart"][0]["family"] == "qwen-image"


def test_change_per_call_against_sdxl(qwen, sdxl, sampling):
    """The README's starting ranges: about SDXL's change at the same (alpha, beta) on these
    tiny models."""
    ratio = relative_change(qwen, sample, 1.05, 3.0) / relative_change(
        sdxl, sampling["sdxl"], 1.05, 3.0)
    assert 0.7 < ratio < 1.3, ratio
