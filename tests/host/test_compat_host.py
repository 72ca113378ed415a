"""Compatibility with what users stack on a model: attention-backend nodes that replace the
override slot after ours, EasyCache, which skips model calls, and ComfyUI's TorchCompileModel
(inductor) before or after ours."""

from __future__ import annotations

import pytest
import torch
from host.node_calls import adaptive, skew

pytestmark = pytest.mark.host

OVERRIDE = "optimized_attention_override"


def backend_node(model, chains: bool):
    """What an attention-backend node does to a MODEL: clone and write the override slot,
    chaining the previous override or not (KJNodes' Sage patch and ComfyUI's own backend node
    write it without chaining)."""
    m = model.clone()
    options = m.model_options.setdefault("transformer_options", {})
    previous = options.get(OVERRIDE)

    def backend_attention(func, *args, **kwargs):
        if chains and previous is not None:
            return previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    options[OVERRIDE] = backend_attention
    return m


def probed(model):
    from hopfield_circulation.nodes import probe_nodes

    return probe_nodes.StabilityProbe.execute(model, "value", 64, 0.0, 1.0, "cond",
                                              "all").result[0]


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_a_backend_node_after_ours_that_does_not_chain_is_a_clear_error(
        request, nodes, sampling, family):
    model = request.getfixturevalue(family)
    for patched in (skew(nodes, model, alpha=0.95), adaptive(nodes, model), probed(model)):
        with pytest.raises(RuntimeError, match="put the attention-backend node before"):
            sampling[family](backend_node(patched, chains=False), steps=1)


def test_a_backend_node_that_chains_or_comes_first_keeps_the_steering(nodes, sampling, sdxl):
    steered = sampling["sdxl"](skew(nodes, sdxl))
    after = sampling["sdxl"](backend_node(skew(nodes, sdxl), chains=True))
    before = sampling["sdxl"](skew(nodes, backend_node(sdxl, chains=False)))
    assert torch.equal(after, steered) and torch.equal(before, steered)


STEPS = 12


def easycache(model):
    """ComfyUI's EasyCache (0.3.64 and later): from 15 % of the run, a model call whose input
    moved little since the last computed one is not computed (a wrapper around the diffusion
    model hands back that call's output shifted by the input's change). SD3's MMDiT takes no
    such wrapper: EasyCache computes every step there."""
    from comfy_extras.nodes_easycache import EasyCacheNode

    return EasyCacheNode.execute(model, 1.0, 0.15, 0.95, False).result[0]


def patched_with(nodes, node, model):
    return {"skew": lambda m: skew(nodes, m, alpha=1.1, beta=3.0), "adaptive": lambda m: adaptive(
        nodes, m), "probe": probed}[node](model)


@pytest.fixture(scope="module")
def flux(comfy_host):
    from host import tiny_models

    return tiny_models.tiny_flux()


@pytest.mark.parametrize("family", ["sdxl", "flux"])
@pytest.mark.parametrize("node", ["skew", "adaptive", "probe"])
@pytest.mark.parametrize("cache_first", [True, False], ids=["easycache-first", "ours-first"])
def test_steps_easycache_skips_are_not_taken_for_a_bypassed_override(
        request, nodes, sampling, family, node, cache_first):
    """The steps EasyCache skips run none of our hooks; before, the first of them stopped
    sampling with the message meant for a compiled graph of another model. The steps it
    computes are steered (or recorded) as before."""
    from host import tiny_models
    from host.family_checks import record_calls

    model = request.getfixturevalue(family)
    sample = sampling["sdxl"] if family == "sdxl" else (
        lambda m, **kw: tiny_models.sample_flux(m, cfg=1.0, **kw))
    m = (patched_with(nodes, node, easycache(model)) if cache_first
         else easycache(patched_with(nodes, node, model)))
    m, calls = record_calls(m)
    out = sample(m, steps=STEPS)
    layers = len({layer.index for layer, *_ in calls})
    assert 0 < len(calls) < layers * STEPS  # EasyCache skipped some of the model calls
    if node == "probe":
        assert torch.equal(out, sample(easycache(model), steps=STEPS))
    else:
        assert not torch.equal(out, sample(easycache(model), steps=STEPS))


def test_a_backend_node_after_ours_is_still_an_error_under_easycache(nodes, sampling, sdxl):
    """The run's first model call is always computed: a bypassed override shows there."""
    m = easycache(backend_node(skew(nodes, sdxl, alpha=0.95), chains=False))
    with pytest.raises(RuntimeError, match="put the attention-backend node before"):
        sampling["sdxl"](m, steps=STEPS)


def token_patch(name, model):
    """ComfyUI's ToMe (merges attn1's queries, ratio 0.5) or HyperTile (tiles them, 64 px
    tiles), each at the top level only, as by default: the SD1.x UNet's layers 0, 10 and 12
    (SDXL has no attention at that level, so neither touches it)."""
    from comfy_extras.nodes_hypertile import HyperTile
    from comfy_extras.nodes_tomesd import TomePatchModel

    if name == "tome":
        return TomePatchModel.execute(model, 0.5).result[0]
    return HyperTile.execute(model, 64, 2, 0, False)[0]


@pytest.mark.parametrize("patch", ["tome", "hypertile"])
def test_layers_another_patch_changes_the_tokens_of_are_named_and_left_alone(
        nodes, sampling, patch, caplog):
    """Their queries no longer match their keys, so the skew part cannot be formed there:
    those layers run as the host runs them, the warning names each once, and every other layer
    is steered. Before, they were left out without a word."""
    import logging

    from host import tiny_models
    from host.family_checks import record_calls

    sd15 = tiny_models.tiny_sd15()
    m, calls = record_calls(skew(nodes, token_patch(patch, sd15), alpha=1.1))
    with caplog.at_level(logging.WARNING, logger="hopfield_circulation"):
        out = sampling["sd15"](m, steps=2)
        sampling["sd15"](m, steps=2)
    named = [r.getMessage() for r in caplog.records if "left to the host" in r.getMessage()]
    assert [message.split("layer ")[1].split(" ")[0] for message in named] == ["0", "10", "12"]
    assert {layer.index for layer, *_ in calls} == {2, 4, 6, 8}
    assert not torch.equal(out, sampling["sd15"](token_patch(patch, sd15), steps=2))


@pytest.mark.parametrize("patch", ["tome", "hypertile"])
def test_a_compiled_model_with_its_first_layer_changed_by_another_patch_runs(
        nodes, sampling, patch):
    """Under TorchCompileModel the graph marks once that our hooks ran, at the first call they
    place. That was layer 0's, which ToMe and HyperTile make unplaceable on SD1.x: a run with
    ToMe then stopped with the message for a graph traced for another model. (ToMe merges
    tokens at random, eager and compiled alike, so only HyperTile's sample is compared.)"""
    from host import tiny_models

    model = skew(nodes, token_patch(patch, tiny_models.tiny_sd15()), alpha=1.1)
    eager = sampling["sd15"](model, steps=2)
    torch._dynamo.reset()
    try:
        compiled = sampling["sd15"](torch_compiled(model), steps=2)
    finally:
        torch._dynamo.reset()
    assert torch.isfinite(compiled).all()
    if patch == "hypertile":
        assert (compiled - eager).abs().max() <= COMPILE_TOLERANCE


def test_every_self_attention_taken_by_another_patch_is_a_clear_error(nodes, sampling):
    """HyperTile down to every level of the tiny SD1.x UNet (depth 1) tiles every attn1 call:
    nothing can be steered, and sampling says so rather than running unsteered."""
    from comfy_extras.nodes_hypertile import HyperTile
    from host import tiny_models

    tiled = HyperTile.execute(tiny_models.tiny_sd15(), 32, 2, 1, False)[0]
    with pytest.raises(RuntimeError, match="could be placed in a layer"):
        sampling["sd15"](skew(nodes, tiled, alpha=1.1), steps=1, size=64)


class WithoutBlockIdentity(dict):
    """Transformer options in which nothing says which block runs: what a pack's copy of the
    model's loop (TeaCache's, a first-block cache's) may hand its blocks."""

    def __setitem__(self, key, value):
        if key not in ("block_index", "block_type"):
            super().__setitem__(key, value)

    def copy(self):  # newer hosts' loops copy the options before they write the block
        return WithoutBlockIdentity(self)


def own_loop(model, keep_options: bool):
    """``model`` with its Flux loop run as such a pack runs it: with the call's options less
    the block replaces (ours publish the block) and without the block index newer hosts set
    (``keep_options``), or with no options at all, so attention gets none of the model's
    patches."""
    import inspect

    m = model.clone()
    net = m.get_model_object("diffusion_model")
    host_loop = type(net).forward_orig
    signature = inspect.signature(host_loop)  # 0.3.64 passes the options by position

    def cached_loop(*args, **kwargs):
        call = signature.bind(net, *args, **kwargs)
        given = call.arguments.get("transformer_options") or {}
        call.arguments["transformer_options"] = WithoutBlockIdentity(
            {k: v for k, v in given.items() if k != "patches_replace"}) if keep_options else {}
        return host_loop(*call.args, **call.kwargs)

    m.add_object_patch("diffusion_model.forward_orig", cached_loop)
    return m


@pytest.mark.parametrize("node", ["skew", "probe"])
@pytest.mark.parametrize("keep_options", [True, False], ids=["no-block-identity", "no-options"])
def test_a_pack_running_the_blocks_its_own_way_is_a_clear_error(nodes, flux, node, keep_options):
    """Steering nothing in silence is an error: a loop that tells attention no block (nothing
    placed), or calls it without the model's patches (nothing reached), says so and names the
    likely node. Before, the first ran unsteered without a word and the second was blamed on
    TorchCompileModel."""
    from host import tiny_models

    said = "could be placed in a layer" if keep_options else "although its attention override"
    model = patched_with(nodes, node, own_loop(flux, keep_options))
    with pytest.raises(RuntimeError, match=said) as stopped:
        tiny_models.sample_flux(model, cfg=1.0, steps=1)
    assert "TeaCache" in str(stopped.value)


def test_a_block_replace_given_no_options_runs_the_block_as_given(comfy_host):
    """A pack's loop that hands the block replaces no transformer options (TeaCache's copy of
    Flux's and SD3's loops): ours run the block as they are given it, rather than failing on
    the missing key (the attention then reaches none of our hooks: the case above)."""
    from hopfield_circulation.families.dit_blocks import _publishing_patch
    from hopfield_circulation.families.mmdit import _block_index_patch

    args = {"img": torch.ones(1), "txt": torch.zeros(1)}
    extra = {"original_block": lambda a: {"img": a["img"] + 1, "txt": a["txt"]}}
    for patch in (_publishing_patch("double", 0, None), _block_index_patch(0, None, None)):
        assert torch.equal(patch(args, extra)["img"], torch.full((1,), 2.0))


@pytest.mark.parametrize("nag_first", [True, False], ids=["nag-first", "ours-first"])
def test_normalized_attention_guidance_runs_on_the_steered_retrieval(nodes, sdxl, nag_first):
    """NAGuidance (newer ComfyUI) rewrites attn1's output after the call, in place: every
    call our hook returns is still the formula's, before or after it on the model path."""
    from host import tiny_models
    from host.family_checks import compare_with_formula

    try:
        from comfy_extras.nodes_nag import NAGuidance
    except ImportError:
        pytest.skip("this host has no NAGuidance (ComfyUI 0.3.64 predates it; 0.33.0 has it)")

    def nag(m):
        return NAGuidance.execute(m, 5.0, 0.5, 1.5).result[0]

    m = skew(nodes, nag(sdxl), alpha=1.1) if nag_first else nag(skew(nodes, sdxl, alpha=1.1))
    checked, results = compare_with_formula(m, 1.1, 3.0)
    out = tiny_models.sample_sdxl(checked, steps=3)
    assert torch.isfinite(out).all() and results
    assert max(err for err, _ in results) < 1e-3
    assert not torch.equal(out, tiny_models.sample_sdxl(nag(sdxl), steps=3))


def torch_compiled(model):
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    return TorchCompileModel.execute(model, "inductor").result[0]


def no_transformer_options_guards(guard_entries):
    """ComfyUI's TorchCompileModel passes this guard filter since 0.5.0 (its
    skip_torch_compile_dict): no guard on anything read from transformer_options."""
    return [("transformer_options" not in entry.name) for entry in guard_entries]


def compiled_as_newer_hosts_do(model):
    """``model`` under TorchCompileModel as ComfyUI 0.5.0 and later apply it, on any host."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    m = model.clone()
    set_torch_compile_wrapper(model=m, backend="inductor",
                              options={"guard_filter_fn": no_transformer_options_guards})
    return m


# Compiled minus eager, in latent units: inductor reorders fp32 arithmetic (about 1e-3 on the
# unpatched tiny model after two steps); the steering itself moves the latent far more.
COMPILE_TOLERANCE = 5e-3


def compiles_of(compiled, sample, steps: int, eager) -> tuple[int, int]:
    """(graphs dynamo compiled, graph breaks) in a sampling run of ``compiled`` (under
    TorchCompileModel), whose sample must be ``eager`` up to the compiler's rounding."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert (sample(compiled, steps=steps) - eager).abs().max() <= COMPILE_TOLERANCE
    counters = torch._dynamo.utils.counters
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


@pytest.mark.parametrize("node", ["skew", "adaptive", "probe"])
def test_each_node_settles_what_a_compile_trace_reads(nodes, sdxl, node, monkeypatch):
    """Patching asks, outside any graph, what the kernels' eligibility asks once per device
    (Triton, fp16 products into fp32, tensor cores). A trace that finds a question unasked
    answers no: under TorchCompileModel, whose first model call is already a trace, the Probe
    alone measured by fp32 copies and no kernel on a GPU."""
    from hopfield_circulation.hopfield import fused_triton

    asked = []
    monkeypatch.setattr(fused_triton, "settle", asked.append)
    patch = {"skew": lambda m: skew(nodes, m), "adaptive": lambda m: adaptive(nodes, m),
             "probe": probed}[node]
    patch(sdxl)
    assert asked == [torch.device(sdxl.load_device)]


def test_sd3s_replaced_joint_blocks_run_as_the_unpatched_loop_runs_them(
        nodes, sampling, sd3, monkeypatch):
    """ComfyUI's replace path hands over an original_block that calls the joint block without
    the model's use_checkpoint, so the block replace that publishes the block index put every
    joint block through torch.utils.checkpoint (host time in every block, nothing saved
    without gradients). Ours runs each block as the unreplaced loop does: no checkpoint in an
    inference run, the unpatched sample bit for bit under a pass-through hook, the same runner
    as the original_block of a replace chained before ours; the host's original_block where a
    pack runs the model with a loop of its own, or the host calls its blocks otherwise; and
    with the model's own use_checkpoint set, exactly the unpatched model's checkpoints."""
    import torch.utils.checkpoint

    checkpoints = []
    host_checkpoint = torch.utils.checkpoint.checkpoint

    def counted(*args, **kwargs):
        checkpoints.append(1)
        return host_checkpoint(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counted)
    sample = sampling["sd3"]
    blocks = len(sd3.model.diffusion_model.joint_blocks)

    def checkpoints_of(model):
        checkpoints.clear()
        out = sample(model, steps=2)
        return out, len(checkpoints)

    unpatched, none = checkpoints_of(sd3)
    hooked, hooked_count = checkpoints_of(probed(sd3))
    assert (none, hooked_count) == (0, 0) and torch.equal(hooked, unpatched)

    # a replace chained before ours (as another pack installs one) runs the block through
    # the original_block we hand it
    originals = []
    before = sd3.clone()
    for i in range(blocks):
        def other_pack(args, extra, **kwargs):
            originals.append(extra["original_block"])
            return extra["original_block"](args)

        before.set_model_patch_replace(other_pack, "dit", "double_block", i)
    steered = skew(nodes, before, alpha=0.95)
    out, count = checkpoints_of(steered)
    assert count == 0 and len(originals) == 2 * blocks
    assert all(getattr(o, "__name__", "") == "run_joint_block" for o in originals)
    steered_out = sample(skew(nodes, sd3, alpha=0.95), steps=2)
    assert torch.equal(out, steered_out)

    # a pack that swaps the model's class for its own loop (as NAG's does) keeps its own
    # original_block, whatever its blocks take
    net = sd3.model.diffusion_model
    host_class = type(net)

    class OwnLoop(host_class):
        def forward_core_with_concat(self, *args, **kwargs):
            return super().forward_core_with_concat(*args, **kwargs)

    monkeypatch.setattr(net, "__class__", OwnLoop)
    out, count = checkpoints_of(skew(nodes, sd3, alpha=0.95))
    assert count == 2 * blocks and torch.equal(out, steered_out)
    monkeypatch.setattr(net, "__class__", host_class)

    # a host whose replace path calls its blocks otherwise than 0.3.64 does: its own
    # original_block, which we do not mirror
    from hopfield_circulation.families import mmdit

    with monkeypatch.context() as other_host:
        other_host.setattr(mmdit, "HOST_BLOCK_CALL", "self.joint_blocks[i](args)")
        mmdit._host_block_call_known.cache_clear()
        try:
            out, count = checkpoints_of(skew(nodes, sd3, alpha=0.95))
        finally:
            mmdit._host_block_call_known.cache_clear()
    assert count == 2 * blocks and torch.equal(out, steered_out)

    monkeypatch.setattr(net, "use_checkpoint", True)
    unpatched_again, host_count = checkpoints_of(sd3)
    hooked, hooked_count = checkpoints_of(probed(sd3))
    assert host_count == hooked_count == 2 * blocks
    assert torch.equal(unpatched_again, unpatched) and torch.equal(hooked, unpatched)


@pytest.mark.parametrize("node", ["skew", "adaptive"])
def test_torch_compile_in_both_orders_matches_eager(nodes, sampling, sdxl, node):
    """TorchCompileModel (inductor) after or before a circulation node: the compiled sample is
    the eager one up to the compiler's rounding, and the whole UNet stays one graph (the host's
    SDPA attention has no graph break, and neither does the pack), compiled once for the whole
    run: nothing the pack reads in the graph changes from one model call to the next (the
    model call's id did, and compiled the UNet again at the second call)."""
    patch = (lambda m: skew(nodes, m)) if node == "skew" else (lambda m: adaptive(nodes, m))
    sample = sampling["sdxl"]
    eager = sample(patch(sdxl), steps=3)
    assert (eager - sample(sdxl, steps=3)).abs().max() > 10 * COMPILE_TOLERANCE
    for compiled in (torch_compiled(patch(sdxl)), patch(torch_compiled(sdxl))):
        assert compiles_of(compiled, sample, 3, eager) == (1, 0)
    torch._dynamo.reset()


@pytest.mark.parametrize("probe_over", [False, True])
def test_torch_compile_keeps_sd3s_joint_blocks_in_one_graph(nodes, sampling, sd3, probe_over):
    """SD3 under TorchCompileModel: one graph for the run, with the probe over the steering
    too. The block replace that publishes the block index makes the host checkpoint each joint
    block (ComfyUI's replace path calls it without use_checkpoint=False), and a hook that wrote
    into the call's options in there broke the graph in every block (the probe's scope, which
    the outermost hook now hands on in a copy of the options: 3 graphs, 7 breaks here)."""
    steered = skew(nodes, sd3)
    if probe_over:
        steered = probed(steered)
    sample = sampling["sd3"]
    eager = sample(steered, steps=3)
    assert (eager - sample(sd3, steps=3)).abs().max() > 10 * COMPILE_TOLERANCE
    assert compiles_of(torch_compiled(steered), sample, 3, eager) == (1, 0)
    torch._dynamo.reset()


@pytest.mark.parametrize(("family", "window"), [("sdxl", (0.3, 0.7)), ("sd3", (0.2, 0.8))])
def test_torch_compile_of_a_step_window_compiles_once_inside_and_once_outside(
        request, nodes, sampling, family, window):
    """A circulation on part of the run under TorchCompileModel: two graphs of the model, the
    steered and the plain one, whatever the number of steps (the step wrapper decides the
    window outside the graph; a graph comparing the sigma itself guarded on its value, and its
    first compile served one step only). SD3's joint blocks run inside the host's checkpoint
    in a graph, which torch 2.11 guards whole: the step's sigma and the model call's number
    too, where the blocks were handed them (3 graphs)."""
    model = request.getfixturevalue(family)
    steered = skew(nodes, model, start=window[0], end=window[1])
    sample = sampling[family]
    eager = sample(steered, steps=5)
    assert (eager - sample(model, steps=5)).abs().max() > 10 * COMPILE_TOLERANCE
    assert compiles_of(torch_compiled(steered), sample, 5, eager) == (2, 0)
    torch._dynamo.reset()


def test_compiled_without_guards_on_transformer_options_steers_as_eager(nodes, sampling, sdxl):
    """TorchCompileModel as ComfyUI 0.5.0 and later apply it: no guard on what the graph reads
    from transformer_options, where model patches live, and one graph cache for every compile
    of a module. What our hooks decide by is read from the step wrapper's ModelCall, so the
    graph is guarded on it: a step window compiles a steered and a plain graph (it steered
    every step or none), a model re-steered after TorchCompileModel gets its new settings
    (it kept the first), and the baseline after a steered run is not steered (it raised in
    the host's code). A graph traced without our hooks cannot be guarded by them: a steered
    model that gets the baseline's graph raises, saying so, instead of running unsteered.
    The window after another alpha: once alpha was a graph input, inductor's FX graph cache
    handed the window's steered steps the graph compiled for alpha = 0.9 (0.09 from eager)."""
    sample = sampling["sdxl"]
    plain = sample(sdxl, steps=3)
    settings = [dict(alpha=0.95), dict(alpha=0.9), dict(alpha=0.95, start=0.3, end=0.7)]
    eager = [sample(skew(nodes, sdxl, **s), steps=3) for s in settings]
    torch._dynamo.reset()
    compiled_first = compiled_as_newer_hosts_do(sdxl)  # TorchCompileModel before ours
    for s, expected in zip(settings, eager, strict=True):
        assert (sample(skew(nodes, compiled_first, **s), steps=3) - expected).abs().max() \
            <= COMPILE_TOLERANCE
    assert (sample(compiled_as_newer_hosts_do(sdxl), steps=3) - plain).abs().max() \
        <= COMPILE_TOLERANCE
    torch._dynamo.reset()
    assert (sample(compiled_as_newer_hosts_do(sdxl), steps=3) - plain).abs().max() \
        <= COMPILE_TOLERANCE
    with pytest.raises(RuntimeError, match="traced for another model"):
        sample(compiled_as_newer_hosts_do(skew(nodes, sdxl)), steps=3)
    torch._dynamo.reset()


def test_torch_compile_with_the_probe_records_what_eager_records(nodes, sampling, sdxl):
    """The Stability Probe under TorchCompileModel, in both orders, in both bases, under a
    circulation and under PAG: its measurement joins the graph and one op hands it to the
    recorder as the graph runs, so the UNet stays one graph for the run (a graph break in
    every probed call split it into dozens, recompiled per layer; the input basis' channel
    subset, made in the first call, broke it too), and what the run records is what eager
    records."""
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance
    from hopfield_circulation.nodes import probe_nodes
    from hopfield_circulation.probe import find_run

    sample = sampling["sdxl"]

    def probed_with(base, branch, basis):
        return probe_nodes.StabilityProbe.execute(base, basis, 16, 0.0, 1.0, branch,
                                                  "all").result

    def with_pag(m):  # guidance re-runs the UNet: the probe must not record those passes
        return PerturbedAttentionGuidance.execute(m, 3.0).result[0]

    def unchanged(m):
        return m

    # (compiled first, what runs under the probe, CFG branch, basis, what runs over it,
    # graphs): both orders, the whole batch measured at once ("both") and one chunk of it
    # ("cond"), both bases (the input basis' channel subsets are made before any trace); PAG's
    # pass, with its own attention patch, is a graph of its own, as it is without the probe
    cases = ((True, lambda m: skew(nodes, m, alpha=0.9), "both", "input", unchanged, 1),
             (False, unchanged, "cond", "value", with_pag, 2))
    for compile_first, under, branch, basis, over, graphs in cases:
        m, handle = probed_with(under(sdxl), branch, basis)
        eager = find_run(handle, sample(over(m), steps=2))
        if compile_first:
            m, handle = probed_with(torch_compiled(under(sdxl)), branch, basis)
        else:
            m, handle = probed_with(under(sdxl), branch, basis)
            m = torch_compiled(m)
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        run = find_run(handle, sample(over(m), steps=2))
        counters = torch._dynamo.utils.counters
        assert (counters["stats"]["unique_graphs"],
                sum(counters["graph_break"].values())) == (graphs, 0)
        assert run.counts == eager.counts and run.map_counts == eager.map_counts
        assert run.steering_spaces == eager.steering_spaces
        for key, value in eager.sums.items():
            torch.testing.assert_close(run.sums[key], value, rtol=2e-2, atol=2e-3)
        assert [(e.step, e.index, e.branch) for e in run.series] == \
            [(e.step, e.index, e.branch) for e in eager.series]
    torch._dynamo.reset()
