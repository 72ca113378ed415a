"""Stability Probe and Stability Report on tiny SDXL and SD3 models in real ComfyUI."""

from __future__ import annotations

import json

import pytest
import torch
from host.node_calls import sdxl_attn1_override

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def env(comfy_host, tmp_path_factory):
    import folder_paths
    from hopfield_circulation.nodes import circulation_nodes, probe_nodes
    from host import tiny_models

    folder_paths.set_output_directory(str(tmp_path_factory.mktemp("output")))
    return {"probe": probe_nodes, "circ": circulation_nodes, "tiny": tiny_models,
            "sdxl": tiny_models.tiny_sdxl(), "sd3": tiny_models.tiny_sd3()}


def probe(env, model, basis="value", channels=64, start=0.0, end=1.0, branch="cond",
          layers="all"):
    return env["probe"].StabilityProbe.execute(
        model, basis, channels, start, end, branch, layers
    ).result


def report(env, handle, latent, image=None, save=False):
    return env["probe"].StabilityReport.execute(handle, {"samples": latent}, save,
                                                "hopfield/test", image=image)


def skew(env, model, alpha=1.05):
    return env["circ"].SkewCirculation.execute(model, alpha, 3.0, 0.0, 1.0, "all", "both",
                                               "value").result[0]


def run_of(handle, latent):
    from hopfield_circulation.probe import find_run

    return find_run(handle, latent)


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_report_outputs(env, family):
    model = env[family]
    probed, handle = probe(env, model)
    sample = env["tiny"].sample_sdxl if family == "sdxl" else env["tiny"].sample_sd3
    latent = sample(probed)
    assert torch.equal(latent, sample(model))  # probing never changes the image
    out = report(env, handle, latent)
    heat, over, down, mid, up, whole, text = out.result
    groups = 4 if family == "sdxl" else 3  # the 2-block SD3 has no 'late' third
    assert heat.shape == (groups, 128, 128, 3) and heat.min() >= 0 and heat.max() <= 1
    assert torch.equal(over, heat)  # no image given
    assert all(isinstance(v, float) for v in (down, mid, up, whole))
    assert -1 <= whole <= 1 and "Align_X" in text
    chart = out.ui["hopfield_align_chart"][0]
    assert chart["family"] == family and chart["samples"][0]["layers"]
    assert out.ui["images"] and out.ui["text"]
    json.dumps(out.ui["hopfield_align_chart"])  # the chart payload is JSON


def test_overlay_uses_the_image(env):
    probed, handle = probe(env, env["sdxl"])
    latent = env["tiny"].sample_sdxl(probed)
    image = torch.rand(1, 128, 128, 3)
    heat, over = report(env, handle, latent, image=image).result[:2]
    assert over.shape == heat.shape and not torch.equal(over, heat)


def test_batch_samples_and_branches_stay_separate(env):
    probed, handle = probe(env, env["sdxl"], branch="both")
    latent = env["tiny"].sample_sdxl(probed, batch=2)
    from hopfield_circulation.probe import probe_state
    from hopfield_circulation.probe.summary import summarise

    summary = summarise(probe_state(handle), run_of(handle, latent))
    assert summary.samples == ["sample 0 (cond)", "sample 1 (cond)", "sample 0 (uncond)",
                               "sample 1 (uncond)"]
    align = summary.group_values[:, -1, 2]
    assert len(set(align.tolist())) == 4  # four distinct recordings
    heat = report(env, handle, latent).result[0]
    assert heat.shape[0] == 4 * 4  # four samples x four block groups


def test_memory_does_not_grow_with_steps(env):
    probed, handle = probe(env, env["sd3"])
    short = run_of(handle, env["tiny"].sample_sd3(probed, steps=5))
    long = run_of(handle, env["tiny"].sample_sd3(probed, steps=50))
    assert short.sums.keys() == long.sums.keys() and short.maps.keys() == long.maps.keys()
    assert all(short.maps[k].shape == long.maps[k].shape for k in short.maps)
    assert sum(t.numel() for t in long.sums.values()) == sum(
        t.numel() for t in short.sums.values())
    # Only the saved series grows: four scalars per sample, recorded layer and step.
    assert len(long.series) == 10 * len(short.series)
    assert all(entry.values.numel() == 4 for entry in long.series)


@pytest.mark.parametrize("order", ["probe_after", "probe_before"])
def test_probe_sees_the_circulation(env, order):
    model = env["sdxl"]
    plain, plain_handle = probe(env, model)
    plain_align = report(env, plain_handle, env["tiny"].sample_sdxl(plain)).result[5]
    if order == "probe_after":
        probed, handle = probe(env, skew(env, model, alpha=1.3))
        sampled = probed
    else:
        probed, handle = probe(env, model)
        sampled = skew(env, probed, alpha=1.3)
    steered_align = report(env, handle, env["tiny"].sample_sdxl(sampled)).result[5]
    assert steered_align != pytest.approx(plain_align, abs=1e-6)


def test_both_orders_record_the_same_first_step(env):
    """Before or after the circulation node, the probe measures the output the model used."""
    model = env["sdxl"]
    after, h_after = probe(env, skew(env, model, alpha=1.3))
    probed, h_before = probe(env, model)
    before = skew(env, probed, alpha=1.3)
    run_a = run_of(h_after, env["tiny"].sample_sdxl(after, steps=1))
    run_b = run_of(h_before, env["tiny"].sample_sdxl(before, steps=1))
    for key in run_a.sums:
        torch.testing.assert_close(run_a.sums[key], run_b.sums[key])


def test_input_basis_with_circulation(env):
    probed, handle = probe(env, env["sdxl"], basis="input", channels=16)
    latent = env["tiny"].sample_sdxl(skew(env, probed))
    assert report(env, handle, latent).result[6]
    exact, h_exact = probe(env, env["sdxl"], basis="input", channels=0)
    assert report(env, h_exact, env["tiny"].sample_sdxl(exact)).result[6]


def test_two_samplers_share_one_probe(env):
    probed, handle = probe(env, env["sdxl"])
    first = env["tiny"].sample_sdxl(probed, seed=1)
    second = env["tiny"].sample_sdxl(probed, seed=2)
    report_first = report(env, handle, first).result
    report_second = report(env, handle, second).result
    assert report_first[5] != report_second[5]
    assert report(env, handle, first).result[5] == report_first[5]  # re-queue recomputes


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_series_steps_and_sigmas_placed_after_the_run(env, sampler):
    """Over the whole run the probe reads nothing on the host while sampling: each entry's
    sigma and step come from the sampler's evaluations when the run ends, and equal what a
    per-call read gives (a narrower window's path). Heun evaluates twice per step: both
    evaluations are recorded, each placed by its own sigma."""
    from hopfield_circulation.hook.schedule import require_host_sigma

    steps = 4
    whole, whole_handle = probe(env, env["sdxl"])
    read, read_handle = probe(env, env["sdxl"])
    require_host_sigma(read)  # every model call reads its sigma, as under a narrower window
    placed = run_of(whole_handle, env["tiny"].sample_sdxl(whole, steps=steps, sampler=sampler))
    direct = run_of(read_handle, env["tiny"].sample_sdxl(read, steps=steps, sampler=sampler))
    assert placed.steps == direct.steps == steps
    assert [e.step for e in placed.series] == [e.step for e in direct.series]
    assert [e.sigma for e in placed.series] == pytest.approx([e.sigma for e in direct.series],
                                                             rel=1e-6)
    evaluations = len({e.evaluation for e in placed.series})
    assert evaluations == (steps if sampler == "euler" else 2 * steps - 1)
    assert len(placed.series) == evaluations * len(placed.sums)
    assert placed.sums.keys() == direct.sums.keys()
    assert all(torch.equal(placed.sums[key], direct.sums[key]) for key in placed.sums)


def test_guidance_passes_are_not_recorded(env):
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance

    probed, handle = probe(env, env["sdxl"])
    plain = run_of(handle, env["tiny"].sample_sdxl(probed))
    with_pag = PerturbedAttentionGuidance.execute(probed, 3.0).result[0]
    guided = run_of(handle, env["tiny"].sample_sdxl(with_pag))
    assert len(guided.series) == len(plain.series)


def test_saved_file_round_trips(env):
    from safetensors import safe_open

    probed, handle = probe(env, env["sdxl"], branch="both")
    latent = env["tiny"].sample_sdxl(probed)
    text = report(env, handle, latent, save=True).result[6]
    path = text.rsplit("Saved: ", 1)[1].strip()
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["hopfield_circulation"])
        assert meta["family"] == "sdxl" and meta["settings"]["branch"] == "both"
        assert len(meta["samples"]) == 2 and len(meta["layers"]) == 7
        values = f.get_tensor("series/values")
        assert values.shape[1:] == (4, 1) and values.shape[0] == len(meta["series_kinds"])
        assert f.get_tensor("map/all").shape == (2, 16, 16)
        assert torch.isfinite(f.get_tensor("block_mean/align")).all()


def test_bad_use_fails_clearly(env):
    probed, handle = probe(env, env["sdxl"])
    never = env["tiny"].sample_sdxl(env["sdxl"], seed=5)  # not what the probed model makes
    with pytest.raises(RuntimeError, match="not sampled"):
        report(env, handle, never)
    env["tiny"].sample_sdxl(probed)
    with pytest.raises(RuntimeError, match="did not come from"):
        report(env, handle, never)
    windowed, h_windowed = probe(env, env["sdxl"], start=1.0, end=1.0)
    with pytest.raises(RuntimeError, match="excluded every step"):
        report(env, h_windowed, env["tiny"].sample_sdxl(windowed))
    with pytest.raises(ValueError, match="basis='input'"):
        probe(env, env["sd3"], basis="input")
    with pytest.raises(ValueError, match="layers"):
        probe(env, env["sdxl"], layers="everything")


def record_probe_launches(monkeypatch) -> list:
    """The probe's four launches recorded, not run (the kernels need a GPU): every layout
    planned afresh, CPU tensors taken as CUDA ones."""
    from core.launch_recorder import record_probe_stages
    from hopfield_circulation.hopfield import stability_triton

    launches = []
    record_probe_stages(monkeypatch, launches)
    monkeypatch.setattr(stability_triton, "_FAILED", [])
    monkeypatch.setattr(stability_triton, "eligible", lambda q, k, x: True)
    return launches


@pytest.mark.parametrize("branch", ["cond", "both"])
def test_probed_calls_launch_their_plan_on_the_hosts_own_rows(env, monkeypatch, branch):
    """On CUDA a probed call's four launches are planned per call layout
    (hopfield/stability_triton.py): after a layout's first call, the probe hands the plan the
    host's q, k and output as they are, or for one CFG chunk (the default branch) the
    addresses of its rows, where views of the chunk cost three ops a tensor and a slice one.
    Recorded, not run: the kernels need a GPU."""
    from hopfield_circulation.hook.schedule import StepInfo
    from hopfield_circulation.probe.registry import new_run, probe_state

    launches = record_probe_launches(monkeypatch)
    patched, handle = probe(env, env["sdxl"], branch=branch)
    state = probe_state(handle)
    state.current = new_run(state)
    attn1 = sdxl_attn1_override(patched, StepInfo(10.0, 0, 0.0, 1), (2, 4, 8, 8))
    for seed in range(3):  # Triton's own launches, then the plan's, on the host's tensors
        gen = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(2, 16, 640, generator=gen).half() for _ in range(3))
        out = attn1(q, k, v)
    grams = launches[-4][9:12]  # the first stage reads q, k and the retrieval: addresses
    rows = slice(1, 2) if branch == "cond" else slice(0, 2)  # [uncond, cond]
    assert list(grams) == [t[rows].data_ptr() for t in (q, k, out)]
    state.current = None


@pytest.mark.parametrize("branch", ["cond", "both"])
def test_planned_probe_calls_write_into_the_runs_blocks(env, monkeypatch, branch):
    """A planned probed call allocates nothing: its launches write the measurement into the
    next slot of its layer's output block in the run (ProbeRun.next_slot), reuse the plan's
    workspace, and the run's fold reads the slots where the kernels wrote them, the same
    sums and series as from tensors of their own."""
    from hopfield_circulation.hook.schedule import StepInfo
    from hopfield_circulation.probe.registry import LayerKey, Slot, new_run, probe_state

    launches = record_probe_launches(monkeypatch)
    patched, handle = probe(env, env["sdxl"], branch=branch)
    state = probe_state(handle)
    run = state.current = new_run(state)
    attn1 = sdxl_attn1_override(patched, StepInfo(10.0, 0, 0.0, 1), (2, 4, 8, 8))
    calls = 5
    for seed in range(calls):
        gen = torch.Generator().manual_seed(seed)
        attn1(*(torch.randn(2, 16, 640, generator=gen).half() for _ in range(3)))
    state.current = None
    packed = [m.packed for m in run.pending]
    assert len(packed) == calls and isinstance(packed[0], torch.Tensor)  # the general path
    slots = packed[1:]
    assert all(isinstance(slot, Slot) for slot in slots)
    assert all(slot.block is slots[0].block for slot in slots)
    assert [slot.index for slot in slots] == list(range(calls - 1))
    rows = 1 if branch == "cond" else 2
    assert all(slot.shape == (rows, 4 + 16) for slot in slots)
    # the first call went through Triton's own launches (not recorded), the others planned
    planned = [launches[i:i + 4] for i in range(0, len(launches), 4)]
    assert len(planned) == calls - 1
    for slot, (grams, weights, field, finish) in zip(slots, planned, strict=True):
        assert finish[10] == slot.address and slot.address % 16 == 0  # (work, out)
        assert grams[12] == weights[9] == field[12] == finish[9] == planned[0][0][12]
    # what the kernels would have written, then the fold
    gen = torch.Generator().manual_seed(9)
    values = [torch.randn(rows, 4 + 16, generator=gen) for _ in range(calls)]
    packed[0].copy_(values[0])
    for slot, written in zip(slots, values[1:], strict=True):
        slot.block[slot.index, :slot.numel()] = written.flatten()
    run.fold()
    chunk = 0 if branch == "cond" else 1  # the cond rows within the measurement
    key = next(key for key in run.sums if isinstance(key, LayerKey) and key.branch == 0)
    torch.testing.assert_close(run.sums[key], sum(v[chunk:chunk + 1, :4].T for v in values))
    series = [entry.values for entry in run.series if entry.branch == 0]
    assert all(torch.equal(got, v[chunk:chunk + 1, :4].T) for got, v in
               zip(series, values, strict=True))
