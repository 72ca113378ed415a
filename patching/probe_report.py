"""Turn a recorded ProbeRun into what the Stability Report node shows and saves.

Block means follow the paper: each layer's value is its mean over features, heads and the
recorded steps; a block's value is the mean over its layers (SDXL Down/Mid/Up/All; SD3 early/
middle/late thirds and All). Every sample, and each CFG branch asked for, is reported apart.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass

import torch

from ..hopfield.heatmap import diverging_colors, overlay, upscale
from .probe import BRANCH_NAMES, MEASURES, ProbeRun, ProbeSettings, ProbeState

SCALE_NOTE = (
    "E and λ are computed from the scaled logits QKᵀ/√d, so they are the paper's X S Xᵀ values "
    "divided by √d (the paper drops the scale, footnote 1); r and Align are scale-free."
)
SD3_GROUPS_NOTE = (
    "SD3: align_down, align_mid and align_up carry the early, middle and late thirds of the "
    "joint blocks."
)
COLOUR_PERCENTILE = 0.99


@dataclass
class Summary:
    family: str
    groups: tuple[str, ...]  # block groups in display order, "all" last
    samples: list[str]  # labels, e.g. "sample 0 (cond)"
    sample_keys: list[tuple[int, int]]  # (branch, row in the branch's chunk)
    layers: list[tuple[int, str, str]]  # (index, kind, group) in index order
    layer_values: torch.Tensor  # [samples, layers, 4] means over steps (NaN: not recorded)
    group_values: torch.Tensor  # [samples, groups, 4]
    maps: dict[str, torch.Tensor]  # group -> [samples, H, W] mean lambda map


def summarise(state: ProbeState, run: ProbeRun) -> Summary:
    groups = (*state.layer_map.group_names, "all")
    group_of = {layer.index: layer.group for layer in state.layer_map.layers}
    branches = sorted({key[2] for key in run.counts})
    layers = sorted({(key[0], key[1]) for key in run.counts})
    batch = next(iter(run.sums.values())).shape[1]
    sample_keys = [(b, i) for b in branches for i in range(batch)]
    labels = [f"sample {i} ({BRANCH_NAMES[b]})" for b, i in sample_keys]
    # One device-to-host copy for all sums (not one per layer).
    keys = list(run.sums)
    sums = torch.stack([run.sums[key] for key in keys]).float().cpu()  # [keys, 4, B]
    means = {key: sums[i] / run.counts[key] for i, key in enumerate(keys)}
    layer_values = torch.full((len(sample_keys), len(layers), len(MEASURES)), math.nan)
    for s, (branch, row) in enumerate(sample_keys):
        for j, (index, kind) in enumerate(layers):
            key = (index, kind, branch)
            if key in means:
                layer_values[s, j] = means[key][:, row]
    group_values = torch.full((len(sample_keys), len(groups), len(MEASURES)), math.nan)
    for g, group in enumerate(groups):
        cols = [j for j, (index, _) in enumerate(layers) if group in ("all", group_of[index])]
        if cols:
            group_values[:, g] = layer_values[:, cols].nanmean(dim=1)
    maps = {}
    for group in groups:
        per_sample = []
        for branch, row in sample_keys:
            key = (group, branch)
            if key in run.maps:
                per_sample.append((run.maps[key][row] / run.map_counts[key]).float().cpu())
        if per_sample and len(per_sample) == len(sample_keys):
            maps[group] = torch.stack(per_sample)
    layer_list = [(index, kind, group_of[index]) for index, kind in layers]
    return Summary(state.family, groups, labels, sample_keys, layer_list, layer_values,
                   group_values, maps)


def block_align(summary: Summary) -> dict[str, float]:
    """Align per block for the FLOAT outputs (first sample). SD3's thirds fill down/mid/up."""
    names = ("down", "mid", "up", "all")
    values = summary.group_values[0, :, MEASURES.index("align")].tolist()
    return {name: float(v) for name, v in zip(names, values, strict=True)}


def chart_payload(summary: Summary) -> dict:
    """The `hopfield_align_chart` UI payload the js chart draws (JSON-able; no NaN)."""
    align = MEASURES.index("align")
    samples = []
    for s, label in enumerate(summary.samples):
        layers = [
            {"index": index, "group": group, "kind": kind,
             "align": _finite(summary.layer_values[s, j, align])}
            for j, (index, kind, group) in enumerate(summary.layers)
        ]
        groups = {g: _finite(summary.group_values[s, i, align])
                  for i, g in enumerate(summary.groups)}
        samples.append({"label": label, "layers": layers, "groups": groups})
    return {"family": summary.family, "samples": samples,
            "note": "Align_X per self-attention layer, mean over recorded steps."}


def _finite(value: torch.Tensor) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


def approximation_notes(settings: ProbeSettings, run: ProbeRun) -> list[str]:
    """What in this report is an approximation of the paper's measures, said plainly."""
    notes = []
    if settings.basis == "value":
        notes.append("Basis: value (the attention output's channels per head), a different "
                     "statistic from the paper's input basis; compare runs with each other, "
                     "and use basis 'input' for the paper's numbers.")
    elif settings.channels:
        notes.append(f"Basis: input over a fixed subset of {settings.channels} of X's channels "
                     "(channels = 0 gives the exact value).")
    if settings.basis == "input" and run.steering_spaces and (
            settings.channels or run.steering_spaces != {"input"}):
        notes.append("A circulation node was active: the input basis re-derived its blend over "
                     "the probed channels of X, with the norm matched over those channels "
                     "(approximate; exact only for space 'input' probed with channels = 0).")
    if run.approximate_match:
        notes.append("The LATENT matched this run's output only approximately (e.g. a "
                      "sampler's denoised_output).")
    return notes


def text_report(summary: Summary, run: ProbeRun, settings: ProbeSettings | None = None) -> str:
    lines = [f"Hopfield stability ({summary.family.upper()}), run {run.number}, "
             f"{run.steps} steps recorded."]
    header = f"{'block':<8}{'E_X':>12}{'r_X':>9}{'Align_X':>10}{'eta_M':>9}"
    for s, label in enumerate(summary.samples):
        lines += ["", label, header]
        for g, group in enumerate(summary.groups):
            e, r, a, eta = summary.group_values[s, g].tolist()
            lines.append(f"{group:<8}{e:>12.4g}{r:>9.3f}{a:>10.4f}{eta:>9.3f}")
    lines += ["", "Stable retrieval: high Align_X, low r_X, low E_X. The paper's stable top-20 % "
              "of SDXL samples averaged Align_X 0.690, the unstable bottom-20 % 0.650 "
              "(table 2, input basis, cond branch).", SCALE_NOTE]
    if summary.family == "sd3":
        lines.append(SD3_GROUPS_NOTE)
    if settings is not None:
        lines += approximation_notes(settings, run)
    return "\n".join(lines)


def heatmap_images(summary: Summary, pixel_scale: int = 8) -> tuple[torch.Tensor, list[str]]:
    """IMAGE batch: one coloured lambda map per sample and block group (sample-major).

    The colour range is symmetric and shared by the samples of one block group (its 99th
    percentile of |lambda|), so samples compare at a glance; groups get their own range, since
    lambda's scale differs between UNet levels.
    """
    images, labels, limits = [], [], []
    group_limit = {
        group: torch.quantile(maps.abs().flatten(), COLOUR_PERCENTILE)
        for group, maps in summary.maps.items()
    }
    for s, label in enumerate(summary.samples):
        for group in summary.groups:
            if group in summary.maps:
                images.append(summary.maps[group][s])
                labels.append(f"{label} {group}")
                limits.append(group_limit[group])
    if not images:
        raise RuntimeError(
            "Stability Report: no token maps were recorded for this run (the layers that ran "
            "gave no image-token grid)"
        )
    maps = torch.stack(images)
    colored = diverging_colors(maps, torch.stack(limits))
    h, w = maps.shape[-2:]
    return upscale(colored, (h * pixel_scale, w * pixel_scale)), labels


def overlay_images(heat: torch.Tensor, summary: Summary, image: torch.Tensor) -> torch.Tensor:
    """Each heatmap over the decoded image of its sample (cycled when fewer images are given)."""
    if image.ndim != 4 or image.shape[-1] not in (3, 4):
        raise ValueError(f"Stability Report: 'image' must be an IMAGE [B, H, W, 3], got "
                         f"shape {tuple(image.shape)}")
    per_sample = len(heat) // len(summary.samples)  # heatmaps are sample-major
    # sample (branch, row) -> decoded image row: cond and uncond of one row share the image
    index = torch.tensor([summary.sample_keys[i // per_sample][1] % image.shape[0]
                          for i in range(len(heat))])
    picked = image[..., :3].index_select(0, index).float().cpu()
    return overlay(picked, heat).clamp(0, 1)


def save_report(path: str, summary: Summary, run: ProbeRun, settings: dict) -> None:
    """Every per-layer, per-step series and the maps as .safetensors, written atomically."""
    from safetensors.torch import save_file

    tensors = {f"layer_mean/{name}": summary.layer_values[..., i].contiguous()
               for i, name in enumerate(MEASURES)}
    tensors |= {f"block_mean/{name}": summary.group_values[..., i].contiguous()
                for i, name in enumerate(MEASURES)}
    tensors |= {f"map/{group}": m.contiguous() for group, m in summary.maps.items()}
    series = run.series
    if series:
        # one device-to-host copy for the whole series: [N, 4, B]
        tensors["series/values"] = torch.stack([v for *_, v in series]).float().cpu()
        tensors["series/step"] = torch.tensor([-1 if s is None else s for s, *_ in series])
        tensors["series/sigma"] = torch.tensor([math.nan if s is None else s
                                                for _, s, *_ in series], dtype=torch.float64)
        tensors["series/layer"] = torch.tensor([i for _, _, i, *_ in series])
        tensors["series/branch"] = torch.tensor([b for *_, b, _ in series])
    metadata = {
        "family": summary.family, "samples": summary.samples, "groups": list(summary.groups),
        "layers": [{"index": i, "kind": k, "group": g} for i, k, g in summary.layers],
        "measures": list(MEASURES), "series_kinds": [k for _, _, _, k, _, _ in series],
        "series_layout": "series/values[n, measure, sample row of the branch]; step, sigma, "
                         "layer, branch (0 cond, 1 uncond) per n",
        "settings": settings, "run": run.number, "note": SCALE_NOTE,
    }
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".safetensors.tmp", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"hopfield_circulation": json.dumps(metadata)})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
