"""Reference images under FluxKVCache (newer ComfyUI: the Flux.2 klein KV edit template), on
Flux.2 and Qwen-Image-Edit: after the run's first model call the host drops the reference
tokens from the sequence and appends their cached keys and values, so each call's keys outnumber
its queries (families/reference_keys.py).

Before, the hook took those calls for cross-attention: every step after the first ran
unsteered and unprobed, without a word. Each call is now checked against the float64 formula
over the square call, with the references' queries from the block's first call.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from host import tiny_models
from host.family_checks import compare_with_formula, literal_stability, record_calls
from host.node_calls import adaptive, skew

pytestmark = pytest.mark.host

STEPS = 3
NO_CACHE = "this host has no FluxKVCache (ComfyUI 0.3.64 predates it; 0.33.0 has it)"


def host_has_kv_cache() -> bool:
    import comfy_extras.nodes_flux as flux_nodes

    return hasattr(flux_nodes, "FluxKVCache")


@pytest.fixture(scope="module")
def cache_node(comfy_host):
    if not tiny_models.host_has_flux2():
        pytest.skip(tiny_models.NO_FLUX2)
    if not host_has_kv_cache():
        pytest.skip(NO_CACHE)
    from comfy_extras.nodes_flux import FluxKVCache

    return lambda model: FluxKVCache.execute(model).result[0]


def references(*shapes):
    gen = torch.Generator().manual_seed(3)
    return [torch.randn(shape, generator=gen) for shape in shapes]


# name -> (model, sampler with its references, reference tokens)
def _flux2(guidance):
    refs = references((1, 128, 8, 8), (1, 128, 4, 6))
    model = tiny_models.tiny_flux2(guidance=guidance)
    cfg = 1.0 if guidance else 4.0  # dev at CFG 1 (the cond branch alone); real CFG
    return model, lambda m, **kw: tiny_models.sample_flux2(m, cfg=cfg, reference=refs, **kw), \
        64 + 24


def _qwen():
    refs = references((1, 16, 1, 8, 8))  # Qwen-Image-Edit: one frame, 2 x 2 patches
    model = tiny_models.tiny_qwen_image()
    return model, lambda m, **kw: tiny_models.sample_qwen_image(m, cfg=2.5, reference=refs,
                                                                **kw), 16


MODELS = {"flux2": lambda: _flux2(True), "flux2-cfg": lambda: _flux2(False), "qwen-edit": _qwen}


@pytest.fixture(scope="module", params=list(MODELS))
def cached(request, cache_node):
    return MODELS[request.param]()


@pytest.mark.parametrize("cache_first", [True, False], ids=["cache-then-skew", "skew-then-cache"])
@pytest.mark.parametrize("kind", ["skew", "adaptive"])
def test_every_step_is_steered_by_the_formula(nodes, cache_node, cached, kind, cache_first):
    """Every call of every step (the cached ones from the second on) is within fp32 rounding
    of the formula over the square call, with FluxKVCache placed before or after the node."""
    from hopfield_circulation.families import adapter_for

    model, sample, _ = cached

    def steer(m):
        if kind == "skew":
            return skew(nodes, m, alpha=0.9, beta=3.0)
        return adaptive(nodes, m, alpha=1.3, beta=5.0)

    m = steer(cache_node(model)) if cache_first else cache_node(steer(model))
    alpha, beta = (0.9, 3.0) if kind == "skew" else (1.3, 5.0)
    checked, results = compare_with_formula(m, alpha, beta, adaptive=kind == "adaptive")
    out = sample(checked, steps=STEPS)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, sample(cache_node(model), steps=STEPS))
    assert len(results) == len(adapter_for(model).layer_map.layers) * STEPS  # none handed on
    assert max(err for err, _ in results) < 1e-3


def test_the_steered_rows_are_the_hosts_and_its_references_are_its_first_calls(
        nodes, cache_node, cached):
    """The steering sees the square call: the host's queries, then the references' from the
    block's first call (bit for bit), and hands back as many rows as the host asked for."""
    model, sample, count = cached
    m, calls = record_calls(skew(nodes, cache_node(model), alpha=0.9))
    sample(m, steps=STEPS)
    first = {}
    for layer, q, k, out, text, grid in calls:
        assert q.shape == k.shape and out.shape[-2] == q.shape[-2] == (
            text + grid[0] * grid[1] + count)
        first.setdefault(layer.index, q[:, :, -count:])
        torch.testing.assert_close(q[:, :, -count:], first[layer.index], rtol=0, atol=0)
    assert set(Counter(layer.index for layer, *_ in calls).values()) == {STEPS}


def test_probe_measures_every_step_and_leaves_a_cached_run_bit_for_bit(cache_node, cached):
    """The probe measures every step's square call (the references' queries and rows included,
    as without the cache: each layer's sums equal the literal measures of its calls) and
    leaves the host's output as it was."""
    from hopfield_circulation.families import adapter_for
    from hopfield_circulation.nodes import probe_nodes
    from hopfield_circulation.probe import find_run
    from hopfield_circulation.probe.registry import LayerKey

    model, sample, _ = cached
    kv = cache_node(model)
    probed, handle = probe_nodes.StabilityProbe.execute(
        kv, "value", 64, 0.0, 1.0, "both", "all").result
    m, calls = record_calls(probed)
    out = sample(m, steps=STEPS)
    assert torch.equal(out, sample(kv, steps=STEPS))
    run = find_run(handle, out)
    layers = adapter_for(model).layer_map.layers
    assert len(calls) == len(layers) * STEPS and run.steps == STEPS
    for layer in layers:
        want = sum(literal_stability(q, k, xi)[0].sum(-1)
                   for seen, q, k, xi, _, _ in calls if seen.index == layer.index)
        got = sum(total.double().sum(-1) for key, total in run.sums.items()
                  if key.index == layer.index)
        torch.testing.assert_close(got, want, rtol=2e-4, atol=1e-4)
    assert LayerKey(layers[0].index, layers[0].kind, 0) in run.sums


@pytest.mark.parametrize("probe_outside", [True, False], ids=["probe-on-skew", "skew-on-probe"])
def test_probe_and_skew_together_under_the_cache(nodes, cache_node, cached, probe_outside):
    """Chained, our hooks hand each other the square call: the steering is the formula's in
    every step, the probe records every step, and the image is Skew's alone, bit for bit."""
    from hopfield_circulation.families import adapter_for
    from hopfield_circulation.nodes import probe_nodes
    from hopfield_circulation.probe import find_run

    model, sample, _ = cached
    kv = cache_node(model)

    def probe(m):
        return probe_nodes.StabilityProbe.execute(m, "value", 64, 0.0, 1.0, "both",
                                                  "all").result

    if probe_outside:
        m, handle = probe(skew(nodes, kv, alpha=0.9))
    else:
        m, handle = probe(kv)
        m = skew(nodes, m, alpha=0.9)
    checked, results = compare_with_formula(m, 0.9, 3.0)
    out = sample(checked, steps=STEPS)
    layers = len(adapter_for(model).layer_map.layers)
    assert len(results) == layers * STEPS and max(err for err, _ in results) < 1e-3
    assert torch.equal(out, sample(skew(nodes, kv, alpha=0.9), steps=STEPS))
    assert find_run(handle, out).steps == STEPS


def test_the_queries_kept_go_when_the_run_ends(nodes, cache_node, cached):
    """The references' queries live as long as the host's cached keys: ComfyUI's cleanup at
    the end of the run clears both."""
    from hopfield_circulation.families import reference_keys

    model, sample, _ = cached
    m = skew(nodes, cache_node(model), alpha=0.9)
    (store,) = m.model_options["transformer_options"]["patches"][reference_keys.STORE_NAME]
    kept = []
    original = store.cleanup

    def cleanup():
        kept.append(len(store.by_block))
        original()

    store.cleanup = cleanup
    sample(m, steps=2)
    assert kept and kept[0] > 0 and store.by_block == {}
