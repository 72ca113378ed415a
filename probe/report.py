"""What the Stability Report node shows: heatmaps, overlay, Align per block, chart and text,
built from a run's Summary in one call (``build_report``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..hopfield.heatmap import diverging_colors, overlay, upscale
from ..vocabulary import MEASURES
from .registry import ProbeRun, ProbeSettings, find_run, probe_state
from .report_file import output_path, save_report
from .summary import SCALE_NOTE, Summary, summarise

COLOUR_PERCENTILE = 0.99


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
    if summary.groups_note:
        lines.append(summary.groups_note)
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


@dataclass
class Report:
    """Everything the Stability Report node outputs, for one sampling run."""

    heatmaps: torch.Tensor  # IMAGE: lambda maps per sample and block group
    overlay: torch.Tensor  # IMAGE: the heatmaps over the decoded image (heatmaps without one)
    align: dict[str, float]  # Align_X of the first sample: down, mid, up, all
    text: str
    chart: dict  # the js chart's payload
    saved_path: str | None = None


def build_report(handle, latent, image: torch.Tensor | None = None,
                 filename_prefix: str | None = None) -> Report:
    """The report of the run behind ``latent`` (a LATENT dict's samples); saved as
    .safetensors under ComfyUI's output folder when ``filename_prefix`` is given."""
    run = find_run(handle, latent)
    state = probe_state(handle)
    summary = summarise(state, run)
    heat, _ = heatmap_images(summary)
    over = overlay_images(heat, summary, image) if image is not None else heat
    text = text_report(summary, run, state.settings)
    path = None
    if filename_prefix is not None:
        path = output_path(filename_prefix)
        save_report(path, summary, run, dataclasses.asdict(state.settings))
        text += f"\nSaved: {path}"
    return Report(heat, over, block_align(summary), text, chart_payload(summary), path)
