"""Skew and Adaptive Circulation on tiny SDXL and SD3 models, through real ComfyUI sampling."""

from __future__ import annotations

import copy

import pytest
import torch

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def nodes(comfy_host):
    from hopfield_circulation.nodes import circulation_nodes

    return circulation_nodes


@pytest.fixture(scope="module")
def sdxl(comfy_host):
    from host.tiny_models import tiny_sdxl

    return tiny_sdxl()


@pytest.fixture(scope="module")
def sd3(comfy_host):
    from host.tiny_models import tiny_sd3

    return tiny_sd3()


@pytest.fixture(scope="module")
def sampling(comfy_host):
    from host import tiny_models

    return {"sdxl": tiny_models.sample_sdxl, "sd3": tiny_models.sample_sd3}


def skew(nodes, model, alpha=1.05, beta=3.0, start=0.0, end=1.0, layers="all",
         branch="both", space="value"):
    return nodes.SkewCirculation.execute(
        model, alpha, beta, start, end, layers, branch, space
    ).result[0]


def adaptive(nodes, model, alpha=1.2, beta=5.0, aggregation="per sample", **kw):
    return nodes.AdaptiveCirculation.execute(
        model, alpha, beta, kw.get("start", 0.0), kw.get("end", 1.0), kw.get("layers", "all"),
        kw.get("branch", "both"), kw.get("space", "value"), aggregation,
    ).result[0]


def record_layers(patcher):
    """A clone whose observer records (layer index, kind, steered?) of every self-attention call."""
    from hopfield_circulation.patching.override import add_observer

    seen = []

    def observe(call, out):
        seen.append((call.layer.index, call.layer.kind, call.steering is not None))

    m = patcher.clone()
    add_observer(m, observe)
    return m, seen


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
@pytest.mark.parametrize("alpha, beta", [(1.0, 3.0), (1.05, 0.0)])
def test_identity_settings_are_bit_identical(request, nodes, sampling, family, alpha, beta):
    model = request.getfixturevalue(family)
    base = sampling[family](model)
    patched = skew(nodes, model, alpha=alpha if family == "sdxl" else alpha, beta=beta)
    assert torch.equal(sampling[family](patched), base)
    assert torch.equal(sampling[family](adaptive(nodes, model, alpha=alpha, beta=beta)), base)


@pytest.mark.parametrize("family, alpha", [("sdxl", 1.05), ("sd3", 0.95)])
def test_circulation_changes_samples(request, nodes, sampling, family, alpha):
    model = request.getfixturevalue(family)
    base = sampling[family](model)
    static = sampling[family](skew(nodes, model, alpha=alpha))
    adapted = sampling[family](adaptive(nodes, model))
    assert torch.isfinite(static).all() and torch.isfinite(adapted).all()
    assert not torch.equal(static, base)
    assert not torch.equal(adapted, base)
    assert not torch.equal(static, adapted)


def test_upstream_model_untouched(nodes, sampling, sdxl):
    before = copy.copy(sdxl.model_options["transformer_options"])
    wrappers_before = copy.deepcopy(list(sdxl.wrappers.keys()))
    base = sampling["sdxl"](sdxl)
    skew(nodes, sdxl)
    adaptive(nodes, sdxl)
    assert sdxl.model_options["transformer_options"] == before
    assert list(sdxl.wrappers.keys()) == wrappers_before
    assert torch.equal(sampling["sdxl"](sdxl), base)


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_previous_override_is_chained(request, nodes, sampling, family):
    model = request.getfixturevalue(family)
    calls = []

    def earlier_override(func, *args, **kwargs):
        calls.append(1)
        return func(*args, **kwargs)

    m = model.clone()
    m.model_options["transformer_options"]["optimized_attention_override"] = earlier_override
    base = sampling[family](m)
    n_plain = len(calls)
    calls.clear()
    identity = skew(nodes, m, alpha=1.0)
    assert torch.equal(sampling[family](identity), base)
    assert len(calls) == n_plain > 0  # every attention call still reaches the earlier override
    calls.clear()
    sampling[family](skew(nodes, m))
    assert len(calls) == n_plain


def test_stacked_nodes_chain(nodes, sampling, sdxl):
    once = sampling["sdxl"](skew(nodes, sdxl))
    twice = sampling["sdxl"](skew(nodes, skew(nodes, sdxl)))
    assert not torch.equal(once, twice)  # the second node steers the first one's output


def test_guidance_nodes_chain(nodes, sampling, sdxl, sd3):
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance
    from comfy_extras.nodes_sag import SelfAttentionGuidance
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    steered = skew(nodes, sdxl)
    for patched in (
        PerturbedAttentionGuidance.execute(steered, 3.0).result[0],
        SelfAttentionGuidance.execute(steered, 0.5, 2.0).result[0],
        skew(nodes, PerturbedAttentionGuidance.execute(sdxl, 3.0).result[0]),
        skew(nodes, SelfAttentionGuidance.execute(sdxl, 0.5, 2.0).result[0]),
    ):
        assert torch.isfinite(sampling["sdxl"](patched)).all()
    slg = SkipLayerGuidanceDiT.execute(skew(nodes, sd3, alpha=0.95), 3.0, 0.0, 1.0, "1", "")
    assert torch.isfinite(sampling["sd3"](slg.result[0])).all()
    slg_first = SkipLayerGuidanceDiT.execute(sd3, 3.0, 0.0, 1.0, "1", "").result[0]
    assert torch.isfinite(sampling["sd3"](skew(nodes, slg_first, alpha=0.95))).all()


def test_cfg_one_and_branches(nodes, sampling, sdxl):
    base = sampling["sdxl"](sdxl, cfg=1.0)  # only the cond branch runs
    assert torch.equal(sampling["sdxl"](skew(nodes, sdxl, branch="uncond"), cfg=1.0), base)
    assert not torch.equal(sampling["sdxl"](skew(nodes, sdxl, branch="cond"), cfg=1.0), base)
    both = sampling["sdxl"](skew(nodes, sdxl, branch="both"), cfg=1.0)
    assert torch.equal(both, sampling["sdxl"](skew(nodes, sdxl, branch="cond"), cfg=1.0))


def test_branch_rows_when_batched(nodes, sdxl):
    """cond and uncond share one call (uncond first); only the chosen half is steered."""
    from host.tiny_models import sample_sdxl

    m, seen_rows = sdxl.clone(), []
    from hopfield_circulation.patching.override import add_observer

    def observe(call, out):
        if call.steering is not None:
            seen_rows.append((tuple(call.cond_or_uncond), call.steering.active.tolist()))

    add_observer(m, observe)
    sample_sdxl(skew(nodes, m, branch="cond"))
    assert seen_rows and all(rows == (1, 0) and act == [False, True] for rows, act in seen_rows)


def test_batch_and_split_calls(nodes, sdxl):
    """Batch 2, and cond/uncond of different lengths, which ComfyUI runs as separate calls."""
    from host.tiny_models import sample, sdxl_conditioning

    steered = skew(nodes, sdxl)
    b2 = sample(steered, sdxl_conditioning(1, 2), sdxl_conditioning(2, 2), latent_channels=4,
                batch=2)
    assert b2.shape[0] == 2 and torch.isfinite(b2).all()
    # lcm(77, 385) / 77 = 5 > 4: ComfyUI refuses to pad them into one batch
    long_negative = [[c.repeat(1, 5, 1), extra] for c, extra in sdxl_conditioning(2)]
    chunks = []
    from hopfield_circulation.patching.override import add_observer

    m = steered.clone()
    add_observer(m, lambda call, out: chunks.append(tuple(call.cond_or_uncond)))
    out = sample(m, sdxl_conditioning(1), long_negative, latent_channels=4)
    base = sample(sdxl, sdxl_conditioning(1), long_negative, latent_channels=4)
    assert set(chunks) == {(0,), (1,)}  # separate calls
    assert torch.isfinite(out).all() and not torch.equal(out, base)


def test_step_window(nodes, sampling, sdxl, sd3):
    base = sampling["sdxl"](sdxl, steps=4)
    # sigma_start = sigma_end = 0: no sampled sigma lies in the window
    assert torch.equal(sampling["sdxl"](skew(nodes, sdxl, start=1.0, end=1.0), steps=4), base)
    full = sampling["sdxl"](skew(nodes, sdxl), steps=4)
    early = sampling["sdxl"](skew(nodes, sdxl, start=0.0, end=0.5), steps=4)
    assert not torch.equal(early, base) and not torch.equal(early, full)
    m, seen = record_layers(skew(nodes, sd3, alpha=0.95, start=0.0, end=0.5))
    sampling["sd3"](m, steps=4)
    steered = [s for s in seen if s[2]]
    assert 0 < len(steered) < len(seen)


@pytest.mark.parametrize("family, spec", [
    ("sdxl", "down"), ("sdxl", "mid"), ("sdxl", "up"), ("sdxl", "0-3, 8-13"),
    ("sdxl", "all"), ("sd3", "1"), ("sd3", "early"), ("sd3", "all"),
])
def test_layer_selection_hits_exactly(request, nodes, sampling, family, spec):
    from hopfield_circulation.patching.family import layer_map_of
    from hopfield_circulation.patching.layers import select_layers

    model = request.getfixturevalue(family)
    expected = select_layers(spec, layer_map_of(model))
    m, seen = record_layers(skew(nodes, model, alpha=1.05 if family == "sdxl" else 0.95,
                                 layers=spec))
    sampling[family](m, steps=2)
    steered = {index for index, _, hit in seen if hit}
    assert steered == set(expected)
    per_layer = len(seen) // len(layer_map_of(model).layers)
    assert len(seen) == per_layer * len(layer_map_of(model).layers)  # every layer, every pass


def test_sdxl_layer_map_matches_the_paper_for_full_size_depths():
    from hopfield_circulation.patching.layers import unet_layer_map

    sdxl = [("input", 4, 2), ("input", 5, 2), ("input", 7, 10), ("input", 8, 10),
            ("middle", 0, 10)] + [("output", i, 10) for i in range(3)] + [
        ("output", i, 2) for i in range(3, 6)]
    layer_map = unet_layer_map(sdxl)
    groups = {g: [layer.index for layer in layer_map.layers if layer.group == g]
              for g in ("down", "mid", "up")}
    assert (min(groups["down"]), max(groups["down"])) == (0, 46)
    assert (min(groups["mid"]), max(groups["mid"])) == (48, 66)
    assert (min(groups["up"]), max(groups["up"])) == (68, 138)
    assert len(layer_map.layers) == 70


def test_sd35_image_self_attention_is_steered(nodes, sampling, comfy_host):
    from host.tiny_models import tiny_sd3

    model = tiny_sd3(x_block_self_attn_layers=[0])
    m, seen = record_layers(skew(nodes, model, alpha=0.95))
    out = sampling["sd3"](m)
    assert {(0, "image_self", True), (0, "joint", True), (1, "joint", True)} <= set(seen)
    assert torch.isfinite(out).all()


def test_input_space_sdxl(nodes, sampling, sdxl):
    base = sampling["sdxl"](sdxl)
    value = sampling["sdxl"](skew(nodes, sdxl, space="value"))
    inp = sampling["sdxl"](skew(nodes, sdxl, space="input"))
    assert not torch.equal(inp, base) and torch.isfinite(inp).all()
    # Same steering, different norm-matching axis: close to the value-space result, not equal.
    assert (inp - value).norm() < 0.5 * (value - base).norm()


def test_input_space_without_norm_match_equals_value_space(comfy_host, sdxl):
    """Through the real hook: with norm matching off, input space + W_v == value space."""
    from hopfield_circulation.hopfield import CirculationSettings
    from hopfield_circulation.patching.circulation_hook import patch_circulation
    from host.tiny_models import sample_sdxl

    settings = CirculationSettings(alpha=1.1, beta=2.0, norm_match=False)
    value = sample_sdxl(patch_circulation(sdxl, settings, space="value"))
    inp = sample_sdxl(patch_circulation(sdxl, settings, space="input"))
    # Equal up to fp32 rounding (the exact identity is checked in float64 by the core tier).
    torch.testing.assert_close(inp, value, rtol=1e-3, atol=1e-3)


def test_bad_use_fails_clearly(nodes, sdxl, sd3, comfy_host):
    import comfy.model_management
    import comfy.model_patcher

    with pytest.raises(ValueError, match="input"):
        skew(nodes, sd3, space="input")
    with pytest.raises(ValueError, match="layers"):
        skew(nodes, sdxl, layers="down, nonsense")
    with pytest.raises(ValueError, match="no self-attention"):
        skew(nodes, sdxl, layers="1")  # an attn2 index
    with pytest.raises(ValueError, match="past the last"):
        skew(nodes, sd3, layers="2-30")
    with pytest.raises(ValueError, match="start_percent"):
        skew(nodes, sdxl, start=0.8, end=0.2)
    with pytest.raises(ValueError, match="finite"):
        skew(nodes, sdxl, alpha=float("nan"))

    class NotADiffusionModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.diffusion_model = torch.nn.Linear(2, 2)

    cpu = comfy.model_management.get_torch_device()
    other = comfy.model_patcher.ModelPatcher(NotADiffusionModel(), cpu, cpu)
    with pytest.raises(ValueError, match="supports SDXL.*Linear"):
        skew(nodes, other)
