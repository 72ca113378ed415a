"""The paper's tables 1, 2 and 3b, computed from a joined Dataset.

Table 1: Spearman ρ between each stability measure of each block and each metric (the paper
reports −E_X, so that for every measure but r_X a positive ρ means "more stable, higher score").
Table 2: means of each metric in the top and bottom `fraction` of samples by Align_X.
Table 3b: paired Δ (steered − baseline, same prompt, seed and batch item) on the worst
`fraction` of baseline samples by each metric, for every (α, β) setting in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .correlate import Dataset, one_per_pair, pair_key, setting_of
from .manifest import measure_column
from .stats import (
    Estimate,
    mean_difference_estimate,
    mean_estimate,
    rng_for,
    spearman_estimate,
)

# (label, manifest measure, sign): the paper's set B, plus η_M which the probe also records.
MEASURES = (("-E_X", "energy", -1.0), ("r_X", "instability", 1.0), ("Align_X", "align", 1.0),
            ("eta_M", "eta", 1.0))


@dataclass(frozen=True)
class Options:
    n_boot: int = 1000
    seed: int = 0
    fraction: float = 0.2
    block: str = "all"  # table 2's Align_X block
    lower_is_better: frozenset[str] = frozenset()  # metrics whose worst samples are the highest


@dataclass(frozen=True)
class Correlation:
    metric: str
    block: str
    measure: str
    estimate: Estimate


@dataclass(frozen=True)
class StratumMean:
    column: str  # a metric, or Align_X of the stratifying block
    stratum: str  # "all", "top", "bottom"
    mean: float
    n: int


@dataclass(frozen=True)
class Strata:
    block: str
    size: int  # samples per stratum
    ranked: int  # samples with an Align_X value
    means: list[StratumMean]
    contrasts: dict[str, Estimate]  # column -> top − bottom


@dataclass(frozen=True)
class PairedDelta:
    target: str  # the metric whose worst baseline samples form the subset
    setting: tuple  # (alpha, beta) of the steered rows
    metric: str
    estimate: Estimate
    worst: int  # baseline samples in the subset


def subset_size(n: int, fraction: float) -> int:
    return max(1, int(fraction * n + 0.5)) if n else 0


def table1(data: Dataset, rows: list[dict], options: Options) -> list[Correlation]:
    cells = []
    for metric in data.metrics:
        scores = data.metric(rows, metric)
        for block in data.groups:
            for label, measure, sign in MEASURES:
                values = sign * data.measure(rows, measure_column(measure, block))
                rng = rng_for(options.seed, "table1", metric, block, label)
                cells.append(Correlation(metric, block, label,
                                         spearman_estimate(values, scores, options.n_boot, rng)))
    return cells


def table2(data: Dataset, rows: list[dict], options: Options) -> Strata:
    if options.block not in data.groups:
        raise ValueError(f"--block {options.block}: the manifest's blocks are {data.groups}")
    align_column = measure_column("align", options.block)
    align = data.measure(rows, align_column)
    ranked = [rows[i] for i in np.argsort(align, kind="stable") if np.isfinite(align[i])]
    size = subset_size(len(ranked), options.fraction)
    strata = {"all": ranked, "top": ranked[len(ranked) - size:], "bottom": ranked[:size]}
    columns = [(f"Align_X ({options.block})", lambda r: data.measure(r, align_column))]
    columns += [(m, lambda r, m=m: data.metric(r, m)) for m in data.metrics]
    means, contrasts = [], {}
    for column, values_of in columns:
        for name, members in strata.items():
            values = values_of(members)
            values = values[np.isfinite(values)]
            means.append(StratumMean(column, name, float(values.mean()) if values.size
                                     else float("nan"), int(values.size)))
        rng = rng_for(options.seed, "table2", column)
        contrasts[column] = mean_difference_estimate(values_of(strata["top"]),
                                                     values_of(strata["bottom"]),
                                                     options.n_boot, rng)
    return Strata(options.block, size, len(ranked), means, contrasts)


def table3b(data: Dataset, baseline: list[dict], steered: list[dict],
            options: Options) -> list[PairedDelta]:
    by_setting: dict[tuple, dict[tuple, dict]] = {}
    for row in steered:
        by_setting.setdefault(setting_of(row), {}).setdefault(pair_key(row), row)
    base_rows = one_per_pair(baseline)
    cells = []
    for target in data.metrics:
        worst = _worst(data, base_rows, target, options)
        for setting, partners in sorted(by_setting.items(), key=lambda kv: _sortable(kv[0])):
            pairs = [(row, partners[pair_key(row)]) for row in worst if pair_key(row) in partners]
            for metric in data.metrics:
                deltas = (data.metric([s for _, s in pairs], metric)
                          - data.metric([b for b, _ in pairs], metric))
                rng = rng_for(options.seed, "table3b", target, repr(setting), metric)
                cells.append(PairedDelta(target, setting, metric,
                                         mean_estimate(deltas, options.n_boot, rng), len(worst)))
    return cells


def _worst(data: Dataset, rows: list[dict], metric: str, options: Options) -> list[dict]:
    values = data.metric(rows, metric)
    if metric in options.lower_is_better:
        values = -values
    order = [i for i in np.argsort(values, kind="stable") if np.isfinite(values[i])]
    return [rows[i] for i in order[:subset_size(len(order), options.fraction)]]


def _sortable(setting: tuple) -> tuple:
    return tuple((v is None, v if isinstance(v, int | float) else 0.0) for v in setting)
