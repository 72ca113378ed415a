"""A recorded ProbeRun reduced to per-sample means: the data every report view is drawn from.

Block means follow the paper: each layer's value is its mean over features, heads and the
recorded steps; a block's value is the mean over its layers (SDXL Down/Mid/Up/All; SD3 early/
middle/late thirds and All). Every sample, and each CFG branch asked for, is reported apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..hopfield.heatmap import tokens_to_grid
from ..vocabulary import BRANCH_NAME, MEASURES
from .registry import LayerKey, ProbeRun, ProbeState

SCALE_NOTE = (
    "E and λ are computed from the scaled logits QKᵀ/√d, so they are the paper's X S Xᵀ values "
    "divided by √d (the paper drops the scale, footnote 1); r and Align are scale-free."
)
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
    groups_note: str = ""  # how this family's groups fill the Down/Mid/Up outputs


def mean_map(sums: dict, counts: dict, group: str, branch: int,
             latent: tuple[int, int]) -> torch.Tensor | None:
    """[B, H, W] mean lambda map of a block group ("all": every layer) for one CFG branch, on
    the latent grid; None when nothing was recorded there. ``sums``/``counts``: a run's maps
    (one sum per group, branch and layer grid) and their counts. Resizing is linear, so
    resizing each sum once and dividing by the count is the mean of the resized per-call maps."""
    total, count = None, 0
    for key, summed in sums.items():
        if key.branch == branch and group in ("all", key.group):
            resized = tokens_to_grid(summed, key.grid, latent)
            total = resized if total is None else total + resized
            count += counts[key]
    return None if total is None else total / count


def summarise(state: ProbeState, run: ProbeRun) -> Summary:
    groups = (*state.layer_map.group_names, "all")
    group_of = {layer.index: layer.group for layer in state.layer_map.layers}
    branches = sorted({key.branch for key in run.counts})
    layers = sorted({(key.index, key.kind) for key in run.counts})
    batch = next(iter(run.sums.values())).shape[1]
    sample_keys = [(b, i) for b in branches for i in range(batch)]
    labels = [f"sample {i} ({BRANCH_NAME[b]})" for b, i in sample_keys]
    # One device-to-host copy for all sums (not one per layer).
    keys = list(run.sums)
    sums = torch.stack([run.sums[key] for key in keys]).float().cpu()  # [keys, 4, B]
    means = {key: sums[i] / run.counts[key] for i, key in enumerate(keys)}
    layer_values = torch.full((len(sample_keys), len(layers), len(MEASURES)), math.nan)
    for s, (branch, row) in enumerate(sample_keys):
        for j, (index, kind) in enumerate(layers):
            key = LayerKey(index, kind, branch)
            if key in means:
                layer_values[s, j] = means[key][:, row]
    group_values = torch.full((len(sample_keys), len(groups), len(MEASURES)), math.nan)
    for g, group in enumerate(groups):
        cols = [j for j, (index, _) in enumerate(layers) if group in ("all", group_of[index])]
        if cols:
            group_values[:, g] = layer_values[:, cols].nanmean(dim=1)
    maps = {}
    map_sums = {key: summed.float().cpu() for key, summed in run.maps.items()}
    latent = tuple(run.latent_shape[-2:]) if run.latent_shape else None
    for group in groups:
        per_branch = {branch: mean_map(map_sums, run.map_counts, group, branch, latent)
                      for branch in branches}
        if all(m is not None for m in per_branch.values()):
            maps[group] = torch.stack([per_branch[branch][row] for branch, row in sample_keys])
    layer_list = [(index, kind, group_of[index]) for index, kind in layers]
    return Summary(state.family, groups, labels, sample_keys, layer_list, layer_values,
                   group_values, maps, state.layer_map.report_note)
