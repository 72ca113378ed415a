"""Skew and Adaptive Circulation on tiny SDXL and SD3 models, through real ComfyUI sampling."""

from __future__ import annotations

import copy

import pytest
import torch
from host.node_calls import (
    adaptive,
    compare_rows_with_host,
    record_layers,
    sdxl_attn1_override,
    skew,
)

pytestmark = pytest.mark.host


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
@pytest.mark.parametrize("alpha, beta", [(1.0, 3.0), (1.05, 0.0)])
def test_identity_settings_are_bit_identical(request, nodes, sampling, family, alpha, beta):
    model = request.getfixturevalue(family)
    base = sampling[family](model)
    assert torch.equal(sampling[family](skew(nodes, model, alpha=alpha, beta=beta)), base)
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


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_upstream_model_untouched(request, nodes, sampling, family):
    model = request.getfixturevalue(family).clone()
    # Upstream patches of the kinds our hook adds to a clone (attn1 patches, dit replaces).
    model.set_model_attn1_patch(lambda n, c, v, extra, **kw: (n, c, v))
    model.set_model_patch_replace(lambda a, e, **kw: e["original_block"](a), "dit",
                                  "double_block", 0)
    options_before = copy.deepcopy(model.model_options)  # functions are kept by identity
    wrappers_before = {k: {k1: list(w) for k1, w in v.items()} for k, v in model.wrappers.items()}
    base = sampling[family](model)
    skew(nodes, model, alpha=0.95)
    adaptive(nodes, model)
    assert model.model_options == options_before
    assert {k: {k1: list(w) for k1, w in v.items()} for k, v in model.wrappers.items()} == (
        wrappers_before)
    assert torch.equal(sampling[family](model), base)


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
    sampling[family](skew(nodes, m, alpha=0.95))
    assert len(calls) == n_plain


def test_existing_dit_block_replace_is_chained(nodes, sampling, sd3):
    ran = []

    def earlier_replace(args, extra, **kwargs):
        ran.append(1)
        return extra["original_block"](args)

    m = sd3.clone()
    m.set_model_patch_replace(earlier_replace, "dit", "double_block", 1)
    base = sampling["sd3"](m)
    n_plain = len(ran)
    ran.clear()
    assert torch.equal(sampling["sd3"](skew(nodes, m, alpha=1.0)), base)
    steered, seen = record_layers(skew(nodes, m, alpha=0.95))
    sampling["sd3"](steered)
    assert len(ran) == 2 * n_plain > 0
    assert {(0, "joint", True), (1, "joint", True)} == set(seen)  # block 1 still placed


def test_stacked_nodes_chain(nodes, sampling, sdxl):
    once = sampling["sdxl"](skew(nodes, sdxl))
    twice = sampling["sdxl"](skew(nodes, skew(nodes, sdxl)))
    assert not torch.equal(once, twice)  # the second node steers the first one's output


def test_guidance_nodes_chain(nodes, sampling, sdxl, sd3):
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance
    from comfy_extras.nodes_sag import SelfAttentionGuidance
    from comfy_extras.nodes_sd3 import SkipLayerGuidanceSD3
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    steered = skew(nodes, sdxl)
    plain = sampling["sdxl"](steered)
    for patched in (
        PerturbedAttentionGuidance.execute(steered, 3.0).result[0],
        SelfAttentionGuidance.execute(steered, 0.5, 2.0).result[0],
        skew(nodes, PerturbedAttentionGuidance.execute(sdxl, 3.0).result[0]),
        skew(nodes, SelfAttentionGuidance.execute(sdxl, 0.5, 2.0).result[0]),
    ):
        guided = sampling["sdxl"](patched)
        assert torch.isfinite(guided).all() and not torch.equal(guided, plain)
    sd3_steered = skew(nodes, sd3, alpha=0.95)
    plain = sampling["sd3"](sd3_steered)
    for patched in (
        SkipLayerGuidanceDiT.execute(sd3_steered, 3.0, 0.0, 1.0, "1", "").result[0],
        SkipLayerGuidanceSD3.execute(sd3_steered, "0", 3.0, 0.0, 1.0).result[0],
        skew(nodes, SkipLayerGuidanceDiT.execute(sd3, 3.0, 0.0, 1.0, "1", "").result[0],
             alpha=0.95),
        skew(nodes, SkipLayerGuidanceSD3.execute(sd3, "0", 3.0, 0.0, 1.0).result[0],
             alpha=0.95),
    ):
        guided = sampling["sd3"](patched)
        assert torch.isfinite(guided).all() and not torch.equal(guided, plain)


def test_cfg_one_and_branches(nodes, sampling, sdxl):
    base = sampling["sdxl"](sdxl, cfg=1.0)  # only the cond branch runs
    assert torch.equal(sampling["sdxl"](skew(nodes, sdxl, branch="uncond"), cfg=1.0), base)
    assert not torch.equal(sampling["sdxl"](skew(nodes, sdxl, branch="cond"), cfg=1.0), base)
    both = sampling["sdxl"](skew(nodes, sdxl, branch="both"), cfg=1.0)
    assert torch.equal(both, sampling["sdxl"](skew(nodes, sdxl, branch="cond"), cfg=1.0))


@pytest.mark.parametrize("family, branch", [("sdxl", "cond"), ("sdxl", "uncond"),
                                            ("sd3", "cond")])
def test_unselected_branch_rows_are_the_host_output(request, nodes, family, branch):
    """Batch 2, cond and uncond in one call (uncond first): the other branch's rows of every
    attention call are the host's output bit for bit; the chosen branch's self-attention is not."""
    from host import tiny_models

    model = request.getfixturevalue(family)
    m, rows = compare_rows_with_host(skew(nodes, model, alpha=1.05 if family == "sdxl" else 0.95,
                                          branch=branch))
    getattr(tiny_models, f"sample_{family}")(m, batch=2)
    wanted = 0 if branch == "cond" else 1
    assert {b for b, _, _ in rows} == {0, 1}
    assert all(same for b, same, _ in rows if b != wanted)
    chosen_self = [same for b, same, self_attn in rows if b == wanted and self_attn]
    assert chosen_self and not any(chosen_self)
    assert all(same for b, same, self_attn in rows if b == wanted and not self_attn)  # attn2


def test_branch_rows_when_batched(nodes, sdxl):
    from hopfield_circulation.hook.override import add_observer
    from host.tiny_models import sample_sdxl

    m, seen_rows = sdxl.clone(), []

    def observe(call, out, steering):
        if steering is not None:
            seen_rows.append((tuple(call.cond_or_uncond), steering.active.tolist()))

    add_observer(m, observe)
    sample_sdxl(skew(nodes, m, branch="cond"))
    assert seen_rows and all(rows == (1, 0) and act == [False, True] for rows, act in seen_rows)


def test_batch_and_split_calls(nodes, sdxl):
    """Batch 2, and cond/uncond of different lengths, which ComfyUI runs as separate calls."""
    from hopfield_circulation.hook.override import add_observer
    from host.tiny_models import sample, sdxl_conditioning

    steered = skew(nodes, sdxl)
    b2 = sample(steered, sdxl_conditioning(1, 2), sdxl_conditioning(2, 2), latent_channels=4,
                batch=2)
    assert b2.shape[0] == 2 and torch.isfinite(b2).all()
    # lcm(77, 385) / 77 = 5 > 4: ComfyUI refuses to pad them into one batch
    long_negative = [[c.repeat(1, 5, 1), extra] for c, extra in sdxl_conditioning(2)]
    chunks = []
    m = steered.clone()
    add_observer(m, lambda call, out, steering: chunks.append(tuple(call.cond_or_uncond)))
    out = sample(m, sdxl_conditioning(1), long_negative, latent_channels=4)
    base = sample(sdxl, sdxl_conditioning(1), long_negative, latent_channels=4)
    assert set(chunks) == {(0,), (1,)}  # separate calls
    assert torch.isfinite(out).all() and not torch.equal(out, base)
    # uncond-only steering of split calls: the cond calls are left alone, the uncond ones not
    m, rows = compare_rows_with_host(skew(nodes, sdxl, branch="uncond"))
    sample(m, sdxl_conditioning(1), long_negative, latent_channels=4)
    assert all(same for b, same, _ in rows if b == 0)
    assert not all(same for b, same, self_attn in rows if b == 1 and self_attn)


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
    # A second-order sampler evaluates between schedule steps: still placed and windowed.
    m, seen = record_layers(skew(nodes, sdxl, start=0.0, end=0.5))
    sampling["sdxl"](m, steps=3, sampler="heun")
    assert 0 < sum(s[2] for s in seen) < len(seen)


@pytest.mark.parametrize("window, reads", [((0.0, 1.0), False), ((0.0, 0.5), True),
                                           ((0.2, 1.0), True)])
def test_sigma_is_read_on_the_host_only_when_a_window_needs_it(nodes, sampling, sdxl,
                                                                 monkeypatch, window, reads):
    """Reading a model call's sigma waits for the device: a circulation or a probe over the
    whole run never does it, a narrower window does once per model call."""
    from hopfield_circulation.hook import schedule
    from hopfield_circulation.nodes import probe_nodes

    read = []
    real = schedule._read_sigma_and_schedule
    monkeypatch.setattr(schedule, "_read_sigma_and_schedule",
                        lambda *a: read.append(1) or real(*a))
    steps = 3
    steered = sampling["sdxl"](skew(nodes, sdxl, start=window[0], end=window[1]), steps=steps)
    assert len(read) == (steps if reads else 0)  # CFG: one batched model call per step
    if not reads:  # the whole run steered, as with the sigma read
        read_anyway = skew(nodes, sdxl, start=window[0], end=window[1])
        schedule.require_host_sigma(read_anyway)
        assert torch.equal(sampling["sdxl"](read_anyway, steps=steps), steered)
    read.clear()
    probed, _ = probe_nodes.StabilityProbe.execute(sdxl, "value", 64, *window, "cond",
                                                   "all").result
    sampling["sdxl"](probed, steps=steps)
    assert len(read) == (steps if reads else 0)


@pytest.mark.parametrize("node, branch", [("skew", "both"), ("skew", "cond"),
                                          ("adaptive", "both"), ("adaptive", "cond")])
def test_steered_calls_replay_their_layouts_prepared_launch(nodes, sampling, sd3, monkeypatch,
                                                            node, branch):
    """On the fused path each call layout's launches are prepared once (fused_plan.py): the
    general path runs for a layout's first call, every later call launches the plan, with
    the arguments the general path would give it (tests/core/test_fused_plan.py). Recorded,
    not run: the kernels need a GPU (tiny SD3: heads of 64)."""
    from core.launch_recorder import address, fused_at, record_fused_launches
    from hopfield_circulation.circulation import patch as circulation_patch
    from hopfield_circulation.hook.override import add_observer

    recorder = record_fused_launches(monkeypatch)
    general = []
    real = circulation_patch.circulate_value_space
    monkeypatch.setattr(circulation_patch, "circulate_value_space",
                        lambda q, *a, **kw: general.append(q.shape) or real(q, *a, **kw))
    make = {"skew": lambda m: skew(nodes, m, alpha=0.95, branch=branch),
            "adaptive": lambda m: adaptive(nodes, m, alpha=0.9, beta=3.0, branch=branch)}[node]
    sampling["sd3"](make(sd3), steps=3)
    assert len(set(general)) == len(general) > 0  # each layout once
    # 2 joint blocks, 3 steps: the first through Triton's own launch, the rest compiled
    assert len(recorder.own_launches) + len(recorder.launches) == 3 * 2 > len(general)
    if node == "adaptive":  # each with its eta launch first, eta handed over
        assert len(recorder.eta.own_launches) + len(recorder.eta.launches) == 3 * 2
        assert all(f[9 + fused_at("eta")] == e[9 + 2] for f, e in zip(recorder.launches[-4:],
                                                         recorder.eta.launches[-4:],
                                                         strict=True))  # planned: addresses
    if node == "adaptive":  # an observer reads the coefficients the planned launch wrote
        watched, steerings = make(sd3).clone(), []
        add_observer(watched, lambda call, out, steering: steerings.append(steering))
        before = len(recorder.launches)
        sampling["sd3"](watched, steps=3)
        launched = recorder.launches[before:]  # the general call's, then the plans'
        assert len(launched) == len(steerings) == 3 * 2
        for steering, launch in zip(steerings, launched, strict=True):
            written = launch[9 + fused_at("coefficients")]  # [3, C]: eta-bar, alpha, beta
            columns = steering.alpha.shape[0]
            assert steering.alpha.shape == (columns, 1, 1, 1)
            if isinstance(written, torch.Tensor):  # the general call's; a plan's: its address
                assert written.shape[1] == columns
            assert steering.alpha.data_ptr() == address(written) + 4 * columns
            assert steering.beta.data_ptr() == address(written) + 8 * columns
    rows = [launch[9 + fused_at("active")] for launch in recorder.launches]  # steered rows
    if branch == "both":
        assert all(address(r) == address(launch[9 + fused_at("out")])
                   for r, launch in zip(rows, recorder.launches, strict=True))
    else:  # one mask per model and batch layout: a general call's bytes, then its address
        general_rows = [r for r in rows if isinstance(r, torch.Tensor)] + [
            launch[fused_at("active")] for launch in recorder.own_launches]  # Triton's own
        assert all(r.dtype == torch.uint8 and r.tolist() == [0, 1]  # [uncond, cond]
                   for r in general_rows)
        assert {address(r) for r in rows} == {r.data_ptr() for r in general_rows}
    # An override chained before ours must see every call: no plan replaces the host's call.
    general.clear()
    chained = sd3.clone()
    chained.model_options.setdefault("transformer_options", {})[
        "optimized_attention_override"] = lambda func, *a, **kw: func(*a, **kw)
    sampling["sd3"](make(chained), steps=3)
    assert len(general) == 3 * 2


@pytest.mark.parametrize("branch", ["both", "cond"])
def test_planned_unet_calls_hand_the_host_its_own_layout(nodes, sdxl, monkeypatch, branch):
    """A UNet's attn1 call (q, k, v [B, L, H*d], heads of 64) steered on the fused path: the
    planned launches read the host's tensors and write an output the host takes as it is,
    laid out as the general path's output is when handed back (recorded, not run)."""
    from core.launch_recorder import fused_at, record_fused_launches

    recorder = record_fused_launches(monkeypatch)
    attn1 = sdxl_attn1_override(skew(nodes, sdxl, branch=branch))
    outputs = []
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(2, 16, 640, generator=gen).half() for _ in range(3))
        out = attn1(q, k, v)
        assert out.shape == (2, 16, 640) and out.dtype == torch.float16
        outputs.append(out)
    # the host's tensors themselves, by address
    assert recorder.launches[-1][9:12] == tuple(t.data_ptr() for t in (q, k, v))
    general, *planned = outputs
    assert all(p.stride() == general.stride() for p in planned)
    # written in place, handed on as is
    assert recorder.launches[-1][9 + fused_at("out")] == planned[-1].data_ptr()
    assert len(recorder.own_launches) + len(recorder.launches) == 3


def test_input_space_sdxl(nodes, sampling, sdxl):
    base = sampling["sdxl"](sdxl)
    value = sampling["sdxl"](skew(nodes, sdxl, space="value"))
    inp = sampling["sdxl"](skew(nodes, sdxl, space="input"))
    assert not torch.equal(inp, base) and torch.isfinite(inp).all()
    # Same steering, different norm-matching axis: close to the value-space result, not equal.
    assert (inp - value).norm() < 0.5 * (value - base).norm()
    identity = sampling["sdxl"](skew(nodes, sdxl, alpha=1.0, space="input"))
    assert torch.equal(identity, base)


def test_input_space_without_norm_match_equals_value_space(comfy_host, sdxl):
    """Through the real hook: with norm matching off, input space + W_v == value space."""
    from hopfield_circulation.circulation import patch_circulation
    from hopfield_circulation.hopfield import CirculationSettings
    from host.tiny_models import sample_sdxl

    settings = CirculationSettings(alpha=1.1, beta=2.0, norm_match=False)
    # A LoRA-like weight patch on every attn1.to_v: W_v must be the weight the layer applies.
    lora = sdxl.clone()
    gen = torch.Generator().manual_seed(5)
    diffs = {key: (0.5 * torch.randn(weight.shape, generator=gen),)
             for key, weight in lora.model.state_dict().items()
             if key.endswith("attn1.to_v.weight")}
    assert lora.add_patches(diffs, 1.0)
    for model in (sdxl, lora):
        value = sample_sdxl(patch_circulation(model, settings, space="value"))
        inp = sample_sdxl(patch_circulation(model, settings, space="input"))
        # Equal up to fp32 rounding (the exact identity is checked in float64 by the core tier).
        torch.testing.assert_close(inp, value, rtol=1e-3, atol=1e-3)
    assert not torch.equal(value, sample_sdxl(patch_circulation(sdxl, settings, space="value")))


@pytest.mark.parametrize("smoothed", [False, True])
def test_input_space_on_quantized_values_equals_value_space(comfy_host, smoothed):
    """A checkpoint with fp8 attn1.to_v weights, as newer ComfyUI loads it (QuantizedTensor),
    with and without AWQ's input smoothing: the input space projects X as the layer does (norm
    matching off: equal to the value space up to fp32 rounding)."""
    from hopfield_circulation.circulation import patch_circulation
    from hopfield_circulation.hopfield import CirculationSettings
    from host.tiny_models import sample_sdxl, tiny_sdxl_with_fp8_values

    pytest.importorskip("comfy.quant_ops", reason="this host has no quantised mixed-precision "
                        "layers (comfy.quant_ops; ComfyUI 0.3.64 has scaled_fp8_ops)")
    model = tiny_sdxl_with_fp8_values(smoothed=smoothed)
    settings = CirculationSettings(alpha=1.1, beta=2.0, norm_match=False)
    value = sample_sdxl(patch_circulation(model, settings, space="value"))
    inp = sample_sdxl(patch_circulation(model, settings, space="input"))
    torch.testing.assert_close(inp, value, rtol=1e-3, atol=1e-3)
    assert not torch.equal(value, sample_sdxl(model))


def test_bad_use_fails_clearly(nodes, sdxl, sd3, comfy_host):
    import comfy.model_management
    import comfy.model_patcher
    from host.tiny_models import tiny_unsupported

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
    with pytest.raises(ValueError, match="between 0 and 1"):
        skew(nodes, sdxl, end=1.5)
    with pytest.raises(ValueError, match="alpha must be a finite"):
        skew(nodes, sdxl, alpha=float("nan"))
    with pytest.raises(ValueError, match="beta must be a finite"):
        adaptive(nodes, sdxl, beta=float("inf"))
    refused = r"supports SDXL.* models; this model is WAN21 with a WanModel backbone"
    with pytest.raises(ValueError, match=refused):
        skew(nodes, tiny_unsupported("wan"))

    class NotADiffusionModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.diffusion_model = torch.nn.Linear(2, 2)

    cpu = comfy.model_management.get_torch_device()
    other = comfy.model_patcher.ModelPatcher(NotADiffusionModel(), cpu, cpu)
    with pytest.raises(ValueError, match="supports SDXL.*Linear"):
        skew(nodes, other)


@pytest.mark.parametrize("kind", ["disable_weight_init", "manual_cast", "weight_function",
                                  "scaled_fp8", "quantized_fp8", "quantized_fp8_smoothed",
                                  "plain"])
def test_effective_value_weight_is_what_the_layer_applies(comfy_host, kind):
    """W_v for the input space, whatever the layer type: x W^T + b equals the layer's output,
    and W is a plain tensor (newer hosts' quantised layers hold a QuantizedTensor; "smoothed":
    AWQ's pre_quant_scale, which the layer multiplies into its input)."""
    import comfy.ops
    from hopfield_circulation.families.unet_attn1 import effective_weight

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, generator=gen)
    if kind == "plain":
        layer = torch.nn.Linear(8, 6)
    elif kind == "scaled_fp8":
        if not hasattr(comfy.ops, "scaled_fp8_ops"):
            pytest.skip("this host loads scaled-fp8 checkpoints through its quantised "
                        "mixed-precision layers (ComfyUI 0.3.64 has scaled_fp8_ops)")
        layer = comfy.ops.scaled_fp8_ops().Linear(8, 6, bias=True, dtype=torch.float8_e4m3fn)
        layer.scale_weight = torch.nn.Parameter(torch.tensor(0.25), requires_grad=False)
    elif kind.startswith("quantized"):
        layer = quantized_linear(torch.randn(6, 8, generator=gen), torch.randn(6, generator=gen))
        if kind.endswith("smoothed"):
            layer.pre_quant_scale = torch.nn.Parameter(1 + torch.rand(8, generator=gen),
                                                       requires_grad=False)
    else:
        ops = comfy.ops.disable_weight_init if kind == "disable_weight_init" else (
            comfy.ops.manual_cast)
        layer = ops.Linear(8, 6, bias=True)
    if not kind.startswith("quantized"):
        with torch.no_grad():
            layer.weight.copy_(torch.randn(6, 8, generator=gen).to(layer.weight.dtype))
            layer.bias.copy_(torch.randn(6, generator=gen))
    if kind == "weight_function":
        layer.weight_function = [lambda w: 2 * w + 1]
        layer.comfy_cast_weights = True
    weight, bias = effective_weight(layer, x)
    assert type(weight) in (torch.Tensor, torch.nn.Parameter) and weight.dtype == x.dtype
    with torch.no_grad():
        torch.testing.assert_close(torch.nn.functional.linear(x, weight, bias), layer(x))


def quantized_linear(weight, bias):
    """A Linear of the quantised mixed-precision layers newer ComfyUI loads fp8 (and int8,
    nvfp4, ...) checkpoints into, its weight stored as float8_e4m3fn with a scale; computed as
    on a device without fp8 matmuls (what comfy.ops.pick_operations chooses there)."""
    import comfy.ops

    quant_ops = pytest.importorskip(
        "comfy.quant_ops", reason="this host has no quantised mixed-precision layers "
        "(comfy.quant_ops; ComfyUI 0.3.64 loads fp8 checkpoints through scaled_fp8_ops)")
    ops = comfy.ops.mixed_precision_ops({}, torch.float32, disabled={"float8_e4m3fn"})
    layer = ops.Linear(weight.shape[1], weight.shape[0], bias=True, device="cpu")
    layout = quant_ops.QUANT_ALGOS["float8_e4m3fn"]["comfy_tensor_layout"]
    layer.weight = torch.nn.Parameter(quant_ops.QuantizedTensor.from_float(weight, layout),
                                      requires_grad=False)
    layer.quant_format, layer.layout_type = "float8_e4m3fn", layout
    layer._full_precision_mm = True  # what loading sets for a format the device lacks
    with torch.no_grad():
        layer.bias.copy_(bias)
    layer.weight_function, layer.bias_function = [], []
    return layer


@pytest.mark.parametrize("queries", [16, 96])
def test_cross_attention_costs_the_hook_no_op_of_its_own(nodes, sdxl, monkeypatch, queries):
    """Every other UNet call is cross-attention: the hook turns it away from the host's own
    tensor shapes, before any view, so the call dispatches exactly the host's ops; with more
    queries than keys (every SDXL level: 1,024 or 4,096 against 77) before it is placed."""
    import comfy.ldm.modules.attention as host_attention
    from hopfield_circulation.hook import override as hook
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(func)
            return func(*args, **(kwargs or {}))

    options = dict(skew(nodes, sdxl).model_options["transformer_options"])
    override = options.pop("optimized_attention_override")
    host = host_attention.attention_pytorch.__wrapped__
    q, context = torch.randn(2, queries, 64), torch.randn(2, 77, 64)  # 2 heads of 32
    with Ops() as own:
        want = host(q, context, context, 2, transformer_options=options)
    if queries > 77:
        monkeypatch.setattr(hook, "place_call", lambda *args: pytest.fail("placed"))
    with Ops() as hooked:
        got = override(host, q, context, context, 2, transformer_options=options)
    assert torch.equal(got, want) and hooked.seen == own.seen
