"""Lumina 2 and Z-Image (ComfyUI's NextDiT) through real ComfyUI sampling, on hosts that tell
their attention which block runs (0.5.0 and later; 0.3.64 does not, and the model is refused
there with the version to update to).

The tiny models have the real layouts at tiny width: head dim 128, two refiner blocks over the
text and two over the image before the main blocks, qk-norm and RoPE; Lumina 2 groups its keys
(2 query heads over 1 key head), Z-Image pads the text and the image to multiples of 32 tokens.
Only the main blocks are layers: the refiners' calls must come back as the host made them.
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
NAMES_BLOCKS = "this host tells Lumina 2's attention no block index (ComfyUI 0.3.64; 0.5.0 does)"


def host_names_blocks() -> bool:
    from comfy.ldm.lumina.model import NextDiT
    from hopfield_circulation.families.lumina import host_names_blocks

    return host_names_blocks(NextDiT)


@pytest.fixture(scope="module")
def lumina_host(comfy_host):
    if not host_names_blocks():
        pytest.skip(NAMES_BLOCKS)


@pytest.fixture(scope="module")
def models(lumina_host):
    if not tiny_models.host_has_z_image():
        pytest.skip(tiny_models.NO_Z_IMAGE)
    return {"lumina2": tiny_models.tiny_lumina2(), "z-image": tiny_models.tiny_z_image()}


def conditioning(seed, batch=1, tokens=8, reference=None):
    return tiny_models.qwen_image_conditioning(seed, batch, tokens, reference)


def sample(model, batch=1, height=10, width=12, reference=None, **kw):
    """A 10 x 12 latent: a 5 x 6 token grid, 30 image tokens (Z-Image pads them to 32)."""
    return tiny_models.sample_latent(
        model, conditioning(1, batch, reference=reference),
        conditioning(2, batch, reference=reference),
        torch.zeros(batch, 16, height, width), **kw)


def main_block(options) -> bool:
    return options.get("block_type") == "double"


# (sequence length, text tokens before the image) of a main block's call, 8 text tokens
SEQUENCE = {"lumina2": (8 + 30, 8), "z-image": (32 + 32, 32)}


@pytest.mark.parametrize("kind, count, label, thirds", [
    ("lumina2", 26, "Lumina 2", (9, 9, 8)), ("z-image", 30, "Z-Image", (10, 10, 10)),
])
def test_layer_map_at_the_real_block_counts(nodes, lumina_host, kind, count, label, thirds):
    from hopfield_circulation.families import adapter_for

    if kind == "z-image" and not tiny_models.host_has_z_image():
        pytest.skip(tiny_models.NO_Z_IMAGE)
    build = tiny_models.tiny_lumina2 if kind == "lumina2" else tiny_models.tiny_z_image
    width = 64 if kind == "lumina2" else 256  # Z-Image's modulation takes 256 wide timesteps
    model = build(layers=count, width=width)
    layer_map = adapter_for(model).layer_map
    assert layer_map.family == kind and layer_map.aliases == {}
    assert [layer.index for layer in layer_map.layers] == list(range(count))
    assert {layer.kind for layer in layer_map.layers} == {"joint"}
    assert Counter(layer.group for layer in layer_map.layers) == dict(
        zip(("early", "middle", "late"), thirds, strict=True))
    assert f"{label} layers are the transformer blocks 0-{count - 1}" in layer_map.index_hint
    counts, steered = steered_layers(nodes, model, sample, "late, 3", steps=1)
    assert counts == {i: 1 for i in range(count)}
    assert steered == {3} | set(range(count - thirds[2], count))


@pytest.mark.parametrize("kind", ["lumina2", "z-image"])
def test_identity_settings_are_bit_identical(nodes, models, kind):
    model = models[kind]
    assert_identity_settings_bit_identical(nodes, model, sample)


@pytest.mark.parametrize("kind", ["lumina2", "z-image"])
@pytest.mark.parametrize("mode", ["skew", "adaptive"])
def test_every_main_block_matches_the_float64_formula(nodes, models, kind, mode):
    """Batch 2 at CFG: every main block's call is the formula over the whole sequence (text,
    image and Z-Image's padding); the refiners' calls are the host's own, bit for bit."""
    node = skew if mode == "skew" else adaptive
    alpha, beta = (0.95, 3.0) if mode == "skew" else (1.3, 5.0)
    m, calls = record_calls(node(nodes, models[kind], alpha=alpha, beta=beta))
    checked, results = compare_with_formula(m, alpha, beta, adaptive=mode == "adaptive",
                                            steered=main_block)
    out = sample(checked, batch=2)
    assert torch.isfinite(out).all() and not torch.equal(out, sample(models[kind], batch=2))
    assert len(results) == len(calls) == BLOCKS * 2
    assert max(err for err, _ in results) < 1e-3, results
    assert {(q.shape[-2], text, grid) for _, q, _, _, text, grid in calls} == {
        (*SEQUENCE[kind], (5, 6))}


@pytest.mark.parametrize("spec, expected", [
    ("early", {0, 1}), ("late", {3}), ("0, 2-3", {0, 2, 3}),
])
def test_layer_selection_hits_exactly(nodes, models, spec, expected):
    counts, steered = steered_layers(nodes, models["z-image"], sample, spec)
    assert counts == {i: 2 for i in range(BLOCKS)}
    assert steered == expected


def test_z_image_reference_tokens_come_first_and_stay_off_the_grid(nodes, models):
    """Z-Image's edit path (reference latents): the references' text and tokens come before
    the generated image, which is last; all of it is steered (the formula over the whole
    sequence) and the grid is the generated image's."""
    model = models["z-image"]
    reference = [torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(3))]
    m, calls = record_calls(skew(nodes, model, alpha=0.95))
    checked, results = compare_with_formula(m, 0.95, 3.0, steered=main_block)
    out = sample(checked, reference=reference)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, sample(model, reference=reference))
    assert len(calls) == len(results) == BLOCKS * 2
    for _, q, _, _, text, grid in calls:
        assert (text, grid) == (q.shape[-2] - 32, (5, 6))
        assert q.shape[-2] > SEQUENCE["z-image"][0]  # the reference's tokens take part
    assert max(err for err, _ in results) < 1e-3


@pytest.mark.parametrize("kind, title", [("lumina2", "Lumina 2"), ("z-image", "Z-Image")])
def test_paper_point_says_there_is_none_for_the_model(nodes, models, kind, title):
    assert_paper_point_names(nodes, models[kind], 0.94, 3.5, title)


def test_z_image_pixel_space_is_placed_on_its_patch_grid(nodes, models):
    """Z-Image in pixel space: 16 x 16 pixel patches, so a 64 x 80 image is a 4 x 5 grid,
    20 tokens padded to 32 after the 32 of text; every main block matches the formula."""
    model = tiny_models.tiny_z_image_pixel()
    m, calls = record_calls(skew(nodes, model, alpha=0.95))
    checked, results = compare_with_formula(m, 0.95, 3.0, steered=main_block)
    out = tiny_models.sample_latent(checked, conditioning(1), conditioning(2),
                                    torch.zeros(1, 3, 64, 80))
    assert out.shape == (1, 3, 64, 80) and torch.isfinite(out).all()
    assert len(calls) == len(results) == BLOCKS * 2
    assert {(q.shape[-2], text, grid) for _, q, _, _, text, grid in calls} == {(64, 32, (4, 5))}
    assert max(err for err, _ in results) < 1e-3


def test_newbie_pooled_text_changes_nothing_in_the_placement(nodes, lumina_host):
    """NewBie: Lumina 2 with a pooled CLIP text projection into the modulation (ComfyUI builds
    it as Lumina 2); its main blocks are steered as Lumina 2's."""
    model = tiny_models.tiny_lumina2(newbie=True)
    m, calls = record_calls(skew(nodes, model, alpha=0.95))
    checked, results = compare_with_formula(m, 0.95, 3.0, steered=main_block)

    def pooled(seed):
        positive = conditioning(seed)
        gen = torch.Generator().manual_seed(seed)
        positive[0][1]["pooled_output"] = torch.randn(1, 32, generator=gen)
        return positive

    out = tiny_models.sample_latent(checked, pooled(1), pooled(2), torch.zeros(1, 16, 10, 12))
    assert torch.isfinite(out).all() and len(calls) == len(results) == BLOCKS * 2
    assert max(err for err, _ in results) < 1e-3


def test_input_space_is_refused_with_the_reason(nodes, models):
    with pytest.raises(ValueError, match="Lumina 2 or Z-Image blocks. Use 'value'"):
        skew(nodes, models["lumina2"], space="input")


@pytest.mark.parametrize("kind", ["lumina2", "z-image"])
def test_probe_against_the_literal_reference(probe_nodes, models, kind):
    """Each main block measured as the literal reference has it (family_checks), the map
    the image's tokens after the text (Z-Image's padding after them left out)."""
    assert_probe_matches_literal(probe_nodes, models[kind], sample, blocks=BLOCKS, family=kind,
                                 latent_hw=(10, 12), text=SEQUENCE[kind][1], grid=(5, 6))


def test_change_per_call_against_sdxl(models, sdxl, sampling):
    """The README's starting ranges, on a 16 x 16 latent (an 8 x 8 token grid, as the Flux and
    Qwen-Image rows): at the same (alpha, beta) Lumina 2 moves about as much as SDXL, Z-Image
    about 0.7x (its text padded to 32 tokens); (0.94, 3.5) brings Z-Image to SDXL's paper
    point."""
    def larger(model, **kw):
        return sample(model, height=16, width=16, **kw)

    sdxl_change = relative_change(sdxl, sampling["sdxl"], 1.05, 3.0)
    lumina = relative_change(models["lumina2"], larger, 1.05, 3.0) / sdxl_change
    z_image = relative_change(models["z-image"], larger, 1.05, 3.0) / sdxl_change
    matched = relative_change(models["z-image"], larger, 0.94, 3.5) / sdxl_change
    assert 0.8 < lumina < 1.15, lumina
    assert 0.55 < z_image < 0.85, z_image
    assert 0.85 < matched < 1.2, matched


def test_torch_compile_is_one_graph_equal_to_eager(nodes, models):
    """TorchCompileModel (inductor) after Skew on Z-Image: the whole DiT, refiners included,
    is one graph for the run, and the compiled sample is the eager one up to the compiler's
    rounding."""
    model = models["z-image"]
    assert_one_graph_equal_to_eager(skew(nodes, model, alpha=0.9), model, sample, cfg=1.0)


def test_refused_on_a_host_that_names_no_block(nodes, comfy_host):
    """0.3.64's NextDiT tells attention no block index and has no block replace: a call could
    not be placed, so every node refuses the model, naming the version that works."""
    from hopfield_circulation.families import UnsupportedModelError
    from hopfield_circulation.families.lumina import OLD_HOST
    from hopfield_circulation.nodes import probe_nodes

    if host_names_blocks():
        pytest.skip("this host tells Lumina 2's attention its block (0.5.0 and later)")
    model = tiny_models.tiny_lumina2()
    for patch in (lambda: skew(nodes, model), lambda: adaptive(nodes, model),
                  lambda: probe_nodes.StabilityProbe.execute(model, "value", 64, 0.0, 1.0,
                                                             "cond", "all")):
        with pytest.raises(UnsupportedModelError) as refused:
            patch()
        assert str(refused.value).endswith(OLD_HOST)
