"""Checks the family tests share: every steered call against the float64 formula, the probe's
measures against a literal L x L reference, and the size of the steering change per call.

All of them watch real ComfyUI sampling from the outside: an override installed outside ours
sees the raw arguments the host passes (Flux: [B, H, L, d] after RoPE with ``skip_reshape``;
Qwen-Image: [B, L, H*d] through the masked entry point; SD3: ``heads=`` and a 4-D v).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

F64 = torch.float64


def heads_first(args: tuple, kwargs: dict):
    """(q, k, v) of a raw attention call as [B, H, L, d], and its mask."""
    q, k, v = args[:3]
    heads = args[3] if len(args) > 3 else kwargs["heads"]
    mask = args[4] if len(args) > 4 else kwargs.get("mask")
    if kwargs.get("skip_reshape"):
        return (q, k, v), mask
    split = [t.unflatten(-1, (heads, -1)) if t.ndim == 3 else t for t in (q, k, v)]
    return tuple(t.transpose(1, 2) for t in split), mask


def formula(q, k, v, alpha, beta, adaptive=False):
    """The value-space steering of one call, literally, in float64 with L x L matrices
    (hopfield/reference.py): blend of softmax(M)V and softmax(M_sym + a M_skew)V, norm matched
    to the latter; adaptive: a and b per sample from eta-bar over heads (eq. 36-41)."""
    from hopfield_circulation.hopfield import reference as ref

    q, k, v = (t.to(F64) for t in (q, k, v))
    base = torch.softmax(ref.logits(q, k), -1) @ v
    if adaptive:
        eta = ref.symmetry_index(q, k).mean(-1).reshape(-1, 1, 1, 1)
        alpha, beta = 1 + (alpha - 1) * eta, beta * (1 - eta)
    if adaptive:
        perturbed = torch.cat([ref.skew_scaled_attention(q[i:i + 1], k[i:i + 1], v[i:i + 1],
                                                         alpha[i]) for i in range(len(q))])
    else:
        perturbed = ref.skew_scaled_attention(q, k, v, alpha)
    return ref.blend(base, perturbed, beta), base


def compare_with_formula(patcher, alpha, beta, adaptive=False, steered=None):
    """A clone whose every attention call is checked against ``formula``. Returns (clone,
    results): per call (error of the output relative to the steering change, |Δ|/|Ξ|). A call
    whose keys end with references cached by FluxKVCache is checked as the square call with
    the queries of those references from the block's full call (their first step).
    ``steered(options)``: which calls are layers (default: every square unmasked one); the
    others must return the host's own output, bit for bit."""
    inner = patcher.model_options["transformer_options"]["optimized_attention_override"]
    results = []
    references = {}  # block -> the reference tokens' queries of its last full call

    def check_against_formula(func, *args, **kwargs):
        out = inner(func, *args, **kwargs)
        (q, k, v), mask = heads_first(args, kwargs)
        options = kwargs.get("transformer_options") or {}
        block = (options.get("block_type"), options.get("block_index"))
        count = sum(options.get("reference_image_num_tokens") or ())
        rows = q.shape[-2]
        if count and rows == k.shape[-2]:
            references[block] = q[:, :, rows - count:].clone()
        elif count and k.shape[-2] == rows + count:  # keys from FluxKVCache: the square call
            q = torch.cat((q, references[block].expand(len(q), -1, -1, -1)), dim=2)
        if steered is not None and not steered(options):
            assert torch.equal(out, func(*args, **kwargs)), "a call that is no layer changed"
        elif mask is None and q.shape[-2] == k.shape[-2]:
            want, base = formula(q, k, v, alpha, beta, adaptive)
            want, base = want[:, :, :rows], base[:, :, :rows]
            got = out if kwargs.get("skip_output_reshape") else out.unflatten(
                -1, (q.shape[1], -1)).transpose(1, 2)
            delta = (want - base).norm()
            results.append((float((got.to(F64) - want).norm() / delta),
                            float(delta / base.norm())))
        return out

    m = patcher.clone()
    m.model_options["transformer_options"]["optimized_attention_override"] = (
        check_against_formula)
    return m, results


def literal_stability(q, k, retrieval):
    """E, r, Align, eta per sample and the lambda map [B, L] of one call, literally (eq. 25-29
    and 36) with the explicit M_sym of token-centred q, k, in float64."""
    from hopfield_circulation.hopfield import reference as ref

    q, k, xi = (t.to(F64) for t in (q, k, retrieval))
    qc, kc = q - q.mean(-2, keepdim=True), k - k.mean(-2, keepdim=True)
    m = qc @ kc.transpose(-1, -2) / math.sqrt(q.shape[-1])
    m_sym = (m + m.transpose(-1, -2)) / 2
    xi = xi - xi.mean(-2, keepdim=True)
    xi = xi / xi.norm(dim=-2, keepdim=True)
    field = m_sym @ xi  # [B, H, L, m], column by column
    lam = xi * field
    energy = (-0.5 * lam.sum(-2)).mean((1, 2))
    unstable = (lam < 0).to(F64).mean(-2).mean((1, 2))
    align = ((xi * field).sum(-2) / (xi.norm(dim=-2) * field.norm(dim=-2))).mean((1, 2))
    eta = ref.symmetry_index(q, k).mean(-1)
    return torch.stack([energy, unstable, align, eta]), lam.mean((1, 3))


def image_map(lam: torch.Tensor, grid, latent_hw, text_tokens: int) -> torch.Tensor:
    """The generated image's tokens of a per-token map, on the latent grid (bilinear)."""
    h, w = grid
    image = lam[:, text_tokens:text_tokens + h * w].reshape(-1, 1, h, w)
    return F.interpolate(image, size=tuple(latent_hw), mode="bilinear", align_corners=False)[:, 0]


def record_calls(patcher):
    """A clone whose observer keeps (layer, q, k, out, text tokens, grid) of every placed call."""
    from hopfield_circulation.hook.override import add_observer

    calls = []

    def keep(call, out, steering):
        calls.append((call.layer, call.q.clone(), call.k.clone(), call.from_host(out).clone(),
                       call.text_tokens, call.token_grid))

    m = patcher.clone()
    add_observer(m, keep)
    return m, calls


def relative_change(patcher, sample, alpha, beta, **sample_kw) -> float:
    """Median over the sampled calls of |Δ| / |Ξ| (Δ = steered output - host output, norms over
    the whole call), for a Skew Circulation at (alpha, beta) on every layer."""
    from hopfield_circulation.circulation import patch_circulation
    from hopfield_circulation.hopfield import CirculationSettings

    steered = patch_circulation(patcher, CirculationSettings(alpha=alpha, beta=beta))
    checked, results = compare_with_formula(steered, alpha, beta)
    sample(checked, **sample_kw)
    return float(torch.tensor([size for _, size in results]).median())


def assert_one_graph_equal_to_eager(steered, unpatched, sample, steps: int = 3, **sample_kw):
    """TorchCompileModel (inductor) after ``steered``'s patches: the whole model one graph for
    the run, no graph break, and the compiled sample the eager one up to the compiler's
    rounding (a steered sample that differs from ``unpatched``'s, so the check means
    something)."""
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    eager = sample(steered, steps=steps, **sample_kw)
    assert (eager - sample(unpatched, steps=steps, **sample_kw)).abs().max() > 1e-2
    compiled = TorchCompileModel.execute(steered, "inductor").result[0]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        assert (sample(compiled, steps=steps, **sample_kw) - eager).abs().max() <= 1e-3
        counters = torch._dynamo.utils.counters
        assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    finally:
        torch._dynamo.reset()


def assert_probe_matches_literal(probe_nodes, model, sample, *, blocks: int, family: str,
                                 latent_hw, text: int, grid, **sample_kw):
    """One probed step at CFG (the cond branch recorded): each of the ``blocks`` placed calls
    has ``text`` tokens before the image's and ``grid``, its E, r, Align, eta equal the literal
    L x L measures of the call, the lambda map is the mean over layers of the generated
    image's tokens on the latent grid (an (h, w, row) grid: each row's first w), and the saved
    report names the family."""
    from hopfield_circulation.probe import find_run, probe_state
    from hopfield_circulation.probe.registry import LayerKey
    from hopfield_circulation.probe.summary import summarise

    probed, handle = probe_nodes.StabilityProbe.execute(
        model, "value", 64, 0.0, 1.0, "cond", "all").result
    m, calls = record_calls(probed)
    latent = sample(m, steps=1, **sample_kw)
    run = find_run(handle, latent)
    assert len(calls) == blocks
    cond = slice(1, 2)  # uncond first in the batched call; the probe records cond
    h, w = grid[:2]
    row = grid[2] if len(grid) == 3 else w
    maps = []
    for layer, q, k, out, call_text, call_grid in calls:
        assert (call_text, call_grid) == (text, grid)
        values, lam = literal_stability(q, k, out)
        got = run.sums[LayerKey(layer.index, layer.kind, 0)].double()
        torch.testing.assert_close(got, values[:, cond], rtol=2e-4, atol=2e-5)
        image = lam[cond, text:text + h * row].unflatten(-1, (h, row))[..., :w].flatten(-2)
        maps.append(image_map(image, (h, w), latent_hw, 0))
    summary = summarise(probe_state(handle), run)
    torch.testing.assert_close(summary.maps["all"].double(), torch.stack(maps).mean(0),
                               rtol=1e-4, atol=1e-6)
    report = probe_nodes.StabilityReport.execute(handle, {"samples": latent}, True,
                                                 f"hc/{family}")
    assert f"({family.upper()})" in report.result[6] and "Saved: " in report.result[6]
    assert report.ui["hopfield_align_chart"][0]["family"] == family


def assert_paper_point_names(nodes, model, alpha: float, beta: float, title: str) -> None:
    """The paper measured SDXL and SD3 only: on ``model`` the default operating point falls
    back to the α, β inputs and says so, naming the model."""
    from hopfield_circulation.nodes.operating_points import PAPER_POINT

    out = nodes.SkewCirculation.execute(model, alpha, beta, 0.0, 1.0, "all", "both", "value",
                                        PAPER_POINT)
    (used,) = out.ui["hopfield_operating_point"]
    assert (used["alpha"], used["beta"]) == (alpha, beta)
    assert f"the paper gives no point for {title} models" in used["why"]


# α = 1 (no circulation change) and β = 0 (no blend): each must leave the model as it was
IDENTITY_SETTINGS = ((1.0, 3.0), (1.05, 0.0))


def assert_identity_settings_bit_identical(nodes, model, sample) -> torch.Tensor:
    """Skew and Adaptive Circulation at IDENTITY_SETTINGS sample ``model``'s own result bit for
    bit; returns that result (``sample(model)``)."""
    from host.node_calls import adaptive, skew

    base = sample(model)
    for alpha, beta in IDENTITY_SETTINGS:
        assert torch.equal(sample(skew(nodes, model, alpha=alpha, beta=beta)), base)
        assert torch.equal(sample(adaptive(nodes, model, alpha=alpha, beta=beta)), base)
    return base
