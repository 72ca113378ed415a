"""Spearman's ρ and percentile-bootstrap intervals in numpy alone (scipy is not a runtime need).

ρ is Pearson's r of average ranks (ties share their mean rank), which is what
scipy.stats.spearmanr computes. Missing values (NaN) are dropped pairwise and the n used is
reported with every number, since score files rarely cover every sample.

Table 1 needs ~100 intervals over up to 10K samples each, so a resample's ranks are not sorted
again: a resample is the multiplicity of each original sample, and the average rank of a value
follows from the multiplicities of the values below and equal to it. That is exact (the same
numbers as ranking the resampled vector) and O(n) per resample.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

CI_LEVEL = 0.95
_CHUNK_CELLS = 1_000_000  # resample × sample cells held at once (a few arrays of 8 MB)


@dataclass(frozen=True)
class Estimate:
    """A statistic, its bootstrap interval (NaN when not computable) and the n behind it."""

    value: float
    low: float
    high: float
    n: int


def rng_for(seed: int, *labels: str) -> np.random.Generator:
    """A generator per table cell: a cell's interval does not change when other metrics or
    settings are added to the run."""
    return np.random.default_rng([seed, zlib.crc32("\x1f".join(labels).encode())])


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties given the mean of the ranks they span."""
    values = np.asarray(values, dtype=float)
    n = values.shape[-1]
    order = np.argsort(values, axis=-1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=-1)
    starts = np.ones(ordered.shape, dtype=bool)
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    ends = np.ones(ordered.shape, dtype=bool)
    ends[..., :-1] = starts[..., 1:]
    position = np.arange(n)
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=-1)
    last = np.minimum.accumulate(np.where(ends, position, n - 1)[..., ::-1], axis=-1)[..., ::-1]
    ranks = np.empty(ordered.shape)
    np.put_along_axis(ranks, order, (first + last) / 2 + 1, axis=-1)
    return ranks


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ρ along the last axis; NaN where either side is constant (no ranking to compare)."""
    rx, ry = average_ranks(x), average_ranks(y)
    constant = (np.ptp(rx, axis=-1) == 0) | (np.ptp(ry, axis=-1) == 0)
    rx = rx - rx.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(-1) / np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))
    return np.where(constant, np.nan, np.clip(rho, -1.0, 1.0))


def _finite_pairs(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"expected two 1-D arrays of one length, got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def spearman(x, y) -> tuple[float, int]:
    """(ρ, n) over the pairs where both values are finite; ρ is NaN for n < 2."""
    x, y = _finite_pairs(x, y)
    if len(x) < 2:
        return float("nan"), len(x)
    return float(_spearman_rows(x, y)), len(x)


def _chunks(n: int, n_boot: int):
    step = max(1, _CHUNK_CELLS // max(n, 1))
    for start in range(0, n_boot, step):
        yield min(step, n_boot - start)


def _resample_counts(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """[rows, n]: how often each of the n samples is drawn in each resample."""
    index = rng.integers(0, n, size=(rows, n)) + (np.arange(rows) * n)[:, None]
    return np.bincount(index.ravel(), minlength=rows * n).reshape(rows, n).astype(float)


def _resampled_ranks(counts: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average rank each original sample would get in each resample, and how many distinct
    values each resample holds."""
    _, group = np.unique(values, return_inverse=True)
    rows, k = counts.shape[0], int(group.max()) + 1
    flat = ((np.arange(rows) * k)[:, None] + group[None, :]).ravel()
    per_value = np.bincount(flat, weights=counts.ravel(), minlength=rows * k).reshape(rows, k)
    below = np.cumsum(per_value, axis=1) - per_value
    ranks = (below + (per_value + 1) / 2)[:, group]
    return ranks, (per_value > 0).sum(axis=1)


def _bootstrap_spearman(x: np.ndarray, y: np.ndarray, n_boot: int,
                        rng: np.random.Generator) -> np.ndarray:
    results = []
    for rows in _chunks(len(x), n_boot):
        counts = _resample_counts(rng, rows, len(x))
        rx, distinct_x = _resampled_ranks(counts, x)
        ry, distinct_y = _resampled_ranks(counts, y)
        total = counts.sum(axis=1, keepdims=True)
        dx = rx - (counts * rx).sum(axis=1, keepdims=True) / total
        dy = ry - (counts * ry).sum(axis=1, keepdims=True) / total
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = (counts * dx * dy).sum(1) / np.sqrt((counts * dx * dx).sum(1)
                                                      * (counts * dy * dy).sum(1))
        constant = (distinct_x < 2) | (distinct_y < 2)
        results.append(np.where(constant, np.nan, np.clip(rho, -1.0, 1.0)))
    return np.concatenate(results)


def _bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    results = []
    for rows in _chunks(len(values), n_boot):
        counts = _resample_counts(rng, rows, len(values))
        results.append(counts @ values / len(values))
    return np.concatenate(results)


def _interval(samples: np.ndarray) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    tail = (1 - CI_LEVEL) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def spearman_estimate(x, y, n_boot: int, rng: np.random.Generator) -> Estimate:
    """ρ with its percentile-bootstrap interval (pairs resampled together)."""
    x, y = _finite_pairs(x, y)
    rho, n = spearman(x, y)
    if n < 3 or n_boot <= 0:
        return Estimate(rho, float("nan"), float("nan"), n)
    return Estimate(rho, *_interval(_bootstrap_spearman(x, y, n_boot, rng)), n)


def mean_estimate(values, n_boot: int, rng: np.random.Generator) -> Estimate:
    """Mean of the finite values with its bootstrap interval (paired Δs of table 3b)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    mean = float(values.mean())
    if values.size < 2 or n_boot <= 0:
        return Estimate(mean, float("nan"), float("nan"), int(values.size))
    return Estimate(mean, *_interval(_bootstrap_means(values, n_boot, rng)), int(values.size))


def mean_difference_estimate(a, b, n_boot: int, rng: np.random.Generator) -> Estimate:
    """mean(a) − mean(b) of two independent groups (table 2's strata), each resampled within
    itself; n is len(a) + len(b)."""
    a, b = (np.asarray(v, dtype=float) for v in (a, b))
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    n = int(a.size + b.size)
    if a.size == 0 or b.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), n)
    difference = float(a.mean() - b.mean())
    if min(a.size, b.size) < 2 or n_boot <= 0:
        return Estimate(difference, float("nan"), float("nan"), n)
    differences = _bootstrap_means(a, n_boot, rng) - _bootstrap_means(b, n_boot, rng)
    return Estimate(difference, *_interval(differences), n)
