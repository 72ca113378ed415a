"""Prepared launches of the fused kernel (hopfield/fused_plan.py): a plan launches exactly what
the general path launches for the same call, argument for argument, and steps aside wherever
that path could launch differently. A recording stand-in takes the compiled kernel's place
(no GPU needed); the GPU tier runs the real kernel through both."""

from __future__ import annotations

import importlib.util
import warnings
from types import SimpleNamespace

import pytest
import torch
from core.launch_recorder import address, fused_at, record_fused_launches, record_probe_stages
from hopfield_circulation.hopfield import fused_plan, fused_tiles, fused_triton

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (plans replay its launches)")


@pytest.fixture
def recorder(monkeypatch):
    return record_fused_launches(monkeypatch)


def host_layout(batch, tokens, heads, d, dtype, seed=0):
    """q, k, v as [B, H, L, d] views of the host's [B, L, H*d] tensors (a UNet's call)."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, tokens, heads * d, generator=gen).to(dtype)
                 .view(batch, tokens, heads, d).transpose(1, 2) for _ in range(3))


def joint_layout(batch, tokens, heads, d, dtype, seed=0):
    """q, k, v as views of one joint qkv projection (SD3's layout)."""
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, tokens, 3, heads, d, generator=gen).to(dtype)
    return tuple(qkv[:, :, i].transpose(1, 2) for i in range(3))


CASES = [  # (layout, dtype, d, alpha, beta, norm_match, active)
    (host_layout, torch.float16, 64, 1.05, 3.0, True, None),
    (host_layout, torch.bfloat16, 64, 1.05, 3.0, True, None),
    (host_layout, torch.float16, 128, 0.95, 4.0, False, None),
    (joint_layout, torch.bfloat16, 64, 0.95, 3.0, True, None),
    (joint_layout, torch.float16, 64, -0.5, 2.0, True, [True, False]),
    (host_layout, torch.bfloat16, 128, 1.3, 3.0, True, [False, True]),
    (host_layout, torch.float32, 64, 0.0, 3.0, True, None),
]


def same_launches(general: list[tuple], planned: list[tuple]):
    """Argument for argument: the same input tensors (a plan passes each as its address);
    where one path passes a tensor of its own making (outputs, eta, the coefficients, a
    workspace), the other passes its own, consistently across its launches; equal values
    elsewhere."""
    assert len(general) == len(planned)
    own: dict = {}  # a general path's tensor (its id, or its address) -> the plan's address
    for g_launch, p_launch in zip(general, planned, strict=True):
        assert len(g_launch) == len(p_launch) and g_launch.pointers == p_launch.pointers
        pointers = range(9, 9 + g_launch.pointers)
        for i, (a, b) in enumerate(zip(g_launch, p_launch, strict=True)):
            if i not in pointers:
                assert type(a) is type(b) and a == b, (i, a, b)
                continue
            # the kernel reads a pointer's address (its dtype is the layout's); shapes and
            # strides are arguments
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
                assert a.dtype == b.dtype, i
            made = id(a) if isinstance(a, torch.Tensor) else a
            a, b = address(a), address(b)
            if a != b:  # made by each path: the same one throughout
                assert own.setdefault(made, b) == b, i
            else:
                assert made not in own, i


def addresses(*tensors) -> tuple:
    return tuple(t.data_ptr() for t in tensors)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0].__name__}-{c[1]}-d{c[2]}-"
                         f"a{c[3]}-nm{c[5]}-{'rows' if c[6] else 'all'}")
def test_a_plan_launches_what_the_general_path_launches(recorder, case):
    layout, dtype, d, alpha, beta, norm_match, rows = case
    q, k, v = layout(2, 37, 3, d, dtype)
    active = None if rows is None else torch.tensor(rows)

    def general():
        return fused_triton.fused_skew_circulation(q, k, v, alpha, beta, norm_match=norm_match,
                                                   active=active, alpha_hint=alpha)

    general()  # Triton's own path once, then the cached launcher's
    general_out = general()
    plan = fused_plan.make_skew_plan(q, k, v, alpha, beta, norm_match, active)
    assert plan is not None
    planned_out = plan.run(q, k, v, active)
    assert planned_out is not None
    assert (planned_out.shape, planned_out.stride(), planned_out.dtype) == (
        general_out.shape, general_out.stride(), general_out.dtype)
    same_launches(recorder.launches[-2:-1], recorder.launches[-1:])
    # and for new tensors of the same layout
    q2, k2, v2 = layout(2, 37, 3, d, dtype, seed=1)
    out2 = plan.run(q2, k2, v2, active)
    assert recorder.launches[-1][9:12] == addresses(q2, k2, v2)
    assert out2.stride() == general_out.stride()
    if active is not None:  # the mask as it is (a bool is the kernel's byte): no view
        read = [launch[9 + fused_at("active")] for launch in recorder.launches[-2:]]
        assert read == [active.data_ptr()] * 2
        other = ~active
        plan.run(q2, k2, v2, other)
        assert recorder.launches[-1][9 + fused_at("active")] == other.data_ptr()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_plan_reads_the_hosts_tensors_and_writes_the_hosts_layout(recorder, dtype):
    """Planned for a UNet's call, a plan launches on the host's [B, L, H*d] tensors as they
    are (the same addresses as the general path's views) and writes its output where the
    general path's output, handed back in the host's layout, lies: no view either way."""
    host = [torch.randn(2, 37, 3 * 64).to(dtype) for _ in range(3)]
    q, k, v = (t.view(2, 37, 3, 64).transpose(1, 2) for t in host)

    def to_host(out):
        return out.transpose(1, 2).flatten(2)

    fused_triton.fused_skew_circulation(q, k, v, 1.05, 3.0)
    general_out = fused_triton.fused_skew_circulation(q, k, v, 1.05, 3.0)
    plan = fused_plan.make_skew_plan(q, k, v, 1.05, 3.0, True, None, to_host)
    planned_out = plan.run(*host, None)
    handed = to_host(general_out)
    assert (planned_out.shape, planned_out.stride()) == (handed.shape, handed.stride())
    same_launches(recorder.launches[-2:-1], recorder.launches[-1:])
    assert recorder.launches[-1][9 + fused_at("out")] == planned_out.data_ptr()
    # a hand-over that copies has no layout to write into: no plan
    assert fused_plan.make_skew_plan(q, k, v, 1.05, 3.0, True, None,
                                     lambda out: out.contiguous().flatten(2)) is None


def test_a_plan_steps_aside_where_the_general_path_could_launch_otherwise(recorder):
    q, k, v = host_layout(2, 37, 3, 64, torch.float16)
    fused_triton.fused_skew_circulation(q, k, v, 1.05, 3.0)
    plan = fused_plan.make_skew_plan(q, k, v, 1.05, 3.0, True, None)
    launches = len(recorder.launches)

    # an address off 16 bytes: Triton specialises on it
    storage = torch.randn(2 * 37 * 192 + 1).to(torch.float16)
    off = storage[1:].view(2, 37, 3, 64).transpose(1, 2)
    assert plan.run(off, k, v, None) is None
    assert fused_plan.make_skew_plan(off, k, v, 1.05, 3.0, True, None) is None
    # a profiler's launch hook: Triton's own path, so the profiler sees the launch
    recorder.hooks.launch_enter_hook = SimpleNamespace(calls=[print])
    assert plan.run(q, k, v, None) is None
    recorder.hooks.launch_enter_hook = None
    # the kernel failed in this process: the general path hands over to the two-call path
    fused_triton._DISABLED.append("failed")
    assert plan.run(q, k, v, None) is None
    assert fused_plan.make_skew_plan(q, k, v, 1.05, 3.0, True, None) is None
    fused_triton._DISABLED.clear()
    assert len(recorder.launches) == launches  # none of these launched
    assert plan.run(q, k, v, None) is not None


def test_a_refusing_launcher_hands_every_launch_to_tritons_own_path(recorder):
    q, k, v = host_layout(2, 37, 3, 64, torch.float16)
    fused_triton.fused_skew_circulation(q, k, v, 1.05, 3.0)
    plan = fused_plan.make_skew_plan(q, k, v, 1.05, 3.0, True, None)

    def refuse(*args):
        raise TypeError("function takes exactly 40 arguments")

    recorder.compiled.run = refuse
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert plan.run(q, k, v, None) is None
    assert not recorder.launcher.enabled
    assert any("refused" in str(w.message) for w in caught)
    assert fused_plan.make_skew_plan(q, k, v, 1.05, 3.0, True, None) is None


def test_no_plan_under_the_interpreter_or_before_the_tiles_are_settled(recorder, monkeypatch):
    q, k, v = host_layout(2, 37, 3, 64, torch.float16)
    monkeypatch.setattr(fused_triton, "_launcher", lambda: fused_triton._kernel())
    assert fused_plan.make_skew_plan(q, k, v, 1.05, 3.0, True, None) is None  # no launcher
    monkeypatch.setattr(fused_triton, "_launcher", lambda: recorder.launcher)
    assert fused_plan.make_skew_plan(q, k, v, 1.05, 3.0, True, None) is None  # nothing ran
    monkeypatch.setattr(fused_triton, "settled_config", lambda q: None)
    fused_triton.fused_skew_circulation(q, k, v, 1.05, 3.0, config=fused_tiles.default_config(
        64, torch.float16))
    assert fused_plan.make_skew_plan(q, k, v, 1.05, 3.0, True, None) is None  # tiles untimed


def test_plans_are_kept_per_layout_and_bounded(recorder, monkeypatch):
    plans = fused_plan.LayoutPlans(lambda q, k, v, active, to_host: fused_plan.make_skew_plan(
        q, k, v, 1.05, 3.0, True, active, to_host))
    q, k, v = host_layout(2, 37, 3, 64, torch.float16)
    fused_triton.fused_skew_circulation(q, k, v, 1.05, 3.0)
    fused_triton.fused_skew_circulation(q, k, v, 1.05, 3.0)
    layout = plans.layout(q, k, v, (1, 0))
    assert plans.get(layout) is None
    plans.learn(layout, q, k, v, None, "steering")
    plan, extra = plans.get(layout)
    assert extra == "steering" and plan.run(q, k, v, None) is not None
    assert plans.layout(q, k, v, (0, 1)) != layout  # the chunk labels decide the rows
    assert plans.layout(*joint_layout(2, 37, 3, 64, torch.float16), (1, 0)) != layout
    monkeypatch.setattr(fused_plan, "MAX_PLANS", 1)
    plans.learn(plans.layout(q, k, v, (0,)), q, k, v, None)
    assert len(plans.plans) == 1 and plans.get(layout) is None


ADAPTIVE_CASES = [  # (layout, dtype, d, per_sample, active)
    (host_layout, torch.float16, 64, True, None),
    (joint_layout, torch.bfloat16, 64, False, None),
    (host_layout, torch.bfloat16, 128, True, [False, True]),
]


@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=lambda c: f"{c[0].__name__}-{c[1]}-"
                         f"d{c[2]}-{'per_sample' if c[3] else 'per_call'}-"
                         f"{'rows' if c[4] else 'all'}")
@pytest.mark.parametrize("split", [False, True], ids=["eta-one-launch", "eta-split"])
def test_an_adaptive_plan_launches_what_the_general_path_launches(recorder, monkeypatch, case,
                                                                  split):
    """Adaptive Circulation: the eta kernel's launch (or, with the tokens split, its chunks'
    Grams and their reduction), then the fused kernel's adaptive one, each as the general path
    makes it, with eta and the coefficients passed between them."""
    from hopfield_circulation.hopfield import eta_triton
    from hopfield_circulation.hopfield.symmetry import symmetry_index

    layout, dtype, d, per_sample, rows = case
    if split:  # asked for (one launch by default): 150 tokens in 3 (d 64) or 5 (d 128) chunks
        monkeypatch.setattr(eta_triton, "DEFAULT_SPLITS", 132)
    q, k, v = layout(2, 150 if split else 37, 3, d, dtype)
    active = None if rows is None else torch.tensor(rows)

    def general():
        return fused_triton.fused_adaptive_circulation(
            q, k, v, symmetry_index(q, k), 1.2, 5.0, per_sample=per_sample, active=active)

    general()
    general_out, general_coefficients = general()
    plan = fused_plan.make_adaptive_plan(q, k, v, 1.2, 5.0, per_sample, True, active)
    assert plan is not None
    out, scratch = plan.run(q, k, v, active)
    eta_bar, alpha, beta = plan.coefficient_rows(scratch)
    assert (out.shape, out.stride(), out.dtype) == (
        general_out.shape, general_out.stride(), general_out.dtype)
    assert general_coefficients.shape == (3, 2 if per_sample else 1)
    assert eta_bar.shape == alpha.shape
    assert alpha.shape == beta.shape == (general_coefficients.shape[1], 1, 1, 1)
    assert alpha.data_ptr() == eta_bar.data_ptr() + 4 * eta_bar.numel()  # rows of one tensor
    fused_launches, eta_launches = recorder.launches, recorder.eta.launches
    n = 2 if split else 1  # eta's launches per call
    assert [launch[:3] for launch in eta_launches[-n:]] == (
        [(6, 3 if d == 64 else 5, 1), (6, 1, 1)] if split else [(6, 1, 1)])  # the grids
    same_launches([*eta_launches[-2 * n:-n], fused_launches[-2]],
                  [*eta_launches[-n:], fused_launches[-1]])
    eta = eta_launches[-1][9 + 1] if split else eta_launches[-1][9 + 2]
    assert fused_launches[-1][9 + fused_at("eta")] == eta  # eta: written, then read
    # one allocation: the coefficients the fused kernel records, then eta (then eta's Grams)
    assert fused_launches[-1][9 + fused_at("coefficients")] == eta_bar.data_ptr() \
        == scratch.data_ptr()
    eta_at = 8 if per_sample else 4  # floats: [3, 2] or [3, 1], in whole 16-byte units
    work_at = eta_at + 8  # eta [2, 3]
    assert eta == scratch.data_ptr() + 4 * eta_at
    assert scratch.numel() == work_at + ((6 * (3 if d == 64 else 5) * 3 * d * d) if split else 0)
    if split:  # the chunks' Grams: written by the first launch, read by the reduction
        assert eta_launches[-2][9 + 3] == eta_launches[-1][9] == scratch.data_ptr() + 4 * work_at


def test_no_adaptive_plan_where_the_general_path_takes_torch_ops(recorder, monkeypatch):
    q, k, v = host_layout(2, 37, 3, 64, torch.float16)
    from hopfield_circulation.hopfield.symmetry import symmetry_index

    fused_triton.fused_adaptive_circulation(q, k, v, symmetry_index(q, k), 1.2, 5.0)
    plan = fused_plan.make_adaptive_plan(q, k, v, 1.2, 5.0, True, True, None)
    eta_triton = pytest.importorskip("hopfield_circulation.hopfield.eta_triton")
    monkeypatch.setattr(eta_triton, "_FAILED", ["failed"])  # the eta kernel failed since
    assert plan.run(q, k, v, None) is None
    assert fused_plan.make_adaptive_plan(q, k, v, 1.2, 5.0, True, True, None) is None
    monkeypatch.setattr(eta_triton, "_FAILED", [])
    monkeypatch.setattr(fused_triton, "MAX_ETA_LANES", 2)  # three heads: torch ops average
    assert fused_plan.make_adaptive_plan(q, k, v, 1.2, 5.0, True, True, None) is None


def record_probe_launches(recorder, monkeypatch) -> None:
    """The probe's stages (and eta's, at d = 128) recorded into ``recorder.launches``, one
    sequence, every layout planned afresh."""
    record_probe_stages(monkeypatch, recorder.launches)
    recorder.eta.launches = recorder.eta_reduce.launches = recorder.launches


@pytest.mark.parametrize("layout, dtype, d", [(host_layout, torch.float16, 64),
                                              (joint_layout, torch.bfloat16, 64),
                                              (host_layout, torch.float16, 128)])
def test_the_probes_plan_launches_what_its_general_path_launches(recorder, monkeypatch, layout,
                                                                 dtype, d):
    """The Stability Probe's four launches (five at d = 128, with eta's), planned per call
    layout in hopfield/stability_triton.py: the same launches as the general path's, and the
    general path again where the plan cannot launch as planned."""
    from hopfield_circulation.hopfield import stability_triton

    record_probe_launches(recorder, monkeypatch)
    q, k, x = layout(2, 37, 3, d, dtype)
    stability_triton.stability_triton(q, k, x)  # Triton's own path once; plans the layout
    (layout_key, plan), = stability_triton._plans.items()
    assert plan is not None
    launches = 4 if d == 64 else 5
    stability_triton._plans[layout_key] = None  # the general path, through the launchers
    general = stability_triton.stability_triton(q, k, x)
    stability_triton._plans[layout_key] = plan
    planned = stability_triton.stability_triton(q, k, x)
    assert len(recorder.launches) == 2 * launches
    same_launches(recorder.launches[:launches], recorder.launches[launches:])
    assert [(t.shape, t.stride()) for t in planned] == [(t.shape, t.stride()) for t in general]
    # new tensors of the layout: the plan launches on them
    q2, k2, x2 = layout(2, 37, 3, d, dtype, seed=1)
    stability_triton.stability_triton(q2, k2, x2)
    assert recorder.launches[-launches][9:12] == addresses(q2, k2, x2)
    # an address off 16 bytes: the plan steps aside, the general path runs
    storage = torch.empty(x.untyped_storage().nbytes() // x.element_size() + 1, dtype=dtype)
    off = storage.as_strided(x.shape, x.stride(), x.storage_offset() + 1)  # x's layout
    before = len(recorder.launches)
    assert plan.run(q, k, off) is None and len(recorder.launches) == before


def test_the_probes_plan_under_the_callers_key_launches_on_unviewed_tensors(recorder,
                                                                            monkeypatch):
    """The probe keeps a layout's plan under a key of the host's own tensors too
    (probe/recorder.py): a later call launches it on those tensors, with no [B, H, L, d]
    views made, exactly what the views' launches were, and on one CFG chunk's rows of them
    likewise; a key never planned launches nothing."""
    from hopfield_circulation.hopfield import stability_triton
    from hopfield_circulation.hopfield.stability import layer_stability

    record_probe_stages(monkeypatch, recorder.launches)
    monkeypatch.setattr(stability_triton, "eligible", lambda q, k, x: True)
    gen = torch.Generator().manual_seed(3)
    host = [torch.randn(2, 37, 3 * 64, generator=gen).half() for _ in range(3)]

    def views(t):
        return t.view(2, 37, 3, 64).transpose(1, 2)

    key = stability_triton.host_layout(*host, 3)
    assert stability_triton.run_planned(key, *host) is None  # not planned: nothing launched
    assert not recorder.launches
    for _ in range(2):  # Triton's own launch, then the views' plan: each keeps the key too
        layer_stability(*map(views, host), plan_key=key)
    assert stability_triton._plans[key] is not None
    planned = stability_triton.run_planned(key, *host)
    assert planned.shape == (2, 4 + 37)
    same_launches(recorder.launches[-8:-4], recorder.launches[-4:])
    assert recorder.launches[-4][9:12] == addresses(*host)  # the host's tensors, as they are
    other = stability_triton.host_layout(*host, 4)  # another head count: another layout
    assert stability_triton.run_planned(other, *host) is None
    # One CFG chunk of the call (the probe's default branch): the host's tensors' rows launch
    # what the rows of the views launched, at the rows' addresses, with no slice made
    keys = []
    for rows in (slice(0, 1), slice(1, 2)):
        chunk = [t[rows] for t in host]
        key = stability_triton.rows_layout(rows, *host, 3)
        if not keys:  # the second chunk's layout is the first's: planned by then
            assert stability_triton.run_planned_rows(key, rows, *host) is None
        keys.append(key)
        for _ in range(2):  # a new layout (one sample): Triton's own launch first
            layer_stability(*(views(t)[rows] for t in host), plan_key=key)
        viewed = recorder.launches[-4:]
        assert stability_triton.run_planned_rows(key, rows, *host).shape == (1, 4 + 37)
        same_launches(viewed, recorder.launches[-4:])
        assert list(recorder.launches[-4][9:12]) == [t.data_ptr() for t in chunk] == [
            views(t)[rows].data_ptr() for t in host]
    assert keys[0] == keys[1] != stability_triton.rows_layout(slice(0, 2), *host, 3)
    assert stability_triton.rows_layout(slice(0, 1), *host, 4) != keys[0]  # other heads


@pytest.mark.parametrize("d", [64, 128])
def test_the_probes_plan_keeps_a_workspace_per_thread_and_stream(recorder, monkeypatch, d):
    """A planned probe call allocates no workspace: the plan keeps one per thread and stream
    (a stream runs its launches in order; two threads on one stream each get their own), and
    under CUDA graph capture takes a fresh one per call, as the general path does. At d = 128
    eta's launches write into it too."""
    import threading

    from hopfield_circulation.hopfield import stability_triton

    record_probe_launches(recorder, monkeypatch)
    q, k, x = host_layout(2, 37, 3, d, torch.float16)
    stability_triton.stability_triton(q, k, x)  # Triton's own path once; plans the layout
    plan, = set(stability_triton._plans.values())
    launches = len(plan.launches)

    def work_addresses() -> set:  # every workspace address the last call's launches took
        last = recorder.launches[-launches:]
        return {launch[9 + position] for launch, (stage, _) in zip(last, plan.launches,
                                                                    strict=True)
                for position, name in enumerate(stage_names(stage)) if name == "work"}

    plan.run(q, k, x)
    first = work_addresses()
    plan.run(q, k, x)
    assert work_addresses() == first and len(first) == 1
    assert len(plan.workspaces) == 1
    elsewhere = []
    thread = threading.Thread(target=lambda: (plan.run(q, k, x),
                                              elsewhere.append(work_addresses())))
    thread.start()
    thread.join()
    assert elsewhere[0] != first and len(plan.workspaces) == 2
    # capturing a CUDA graph: a fresh workspace per call, none kept
    monkeypatch.setattr(plan, "device", 0)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    captured = [plan.run(q, k, x) is not None and work_addresses() for _ in range(2)]
    assert all(captured) and first not in captured and len(plan.workspaces) == 2


def stage_names(stage: str) -> tuple:
    """The names of a probe stage's leading tensor arguments, in order."""
    from hopfield_circulation.hopfield import stability_triton

    names = stability_triton.PLANNED_ADDRESSES
    return stability_triton.stage_tensors(stage, *names[:5], names[5:])
