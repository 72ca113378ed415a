"""Core tier: Spearman ρ and bootstrap intervals (numpy only, checked against scipy where it is
installed), the tables on synthetic data with known answers, and hc_correlate end to end."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hopfield_circulation.research import stats
from hopfield_circulation.research.correlate import CorrelateError, load_dataset
from hopfield_circulation.research.render import render_all
from hopfield_circulation.research.tables import Options, table1, table2, table3b

from . import manifest_row

REPO_ROOT = Path(__file__).resolve().parents[2]
CORRELATE = REPO_ROOT / "scripts" / "hc_correlate.py"


def correlated_normals(r: float, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    return x, r * x + math.sqrt(1 - r * r) * rng.standard_normal(n)


def test_average_ranks_share_ties():
    assert stats.average_ranks([10, 20, 20, 30, 20]).tolist() == [1, 3, 3, 5, 3]
    rows = stats.average_ranks(np.array([[3.0, 1.0, 1.0], [2.0, 2.0, 2.0]]))
    assert rows.tolist() == [[3, 1.5, 1.5], [2, 2, 2]]


def test_spearman_recovers_the_known_correlation_of_a_bivariate_normal():
    """For a bivariate normal with Pearson r, Spearman's ρ is (6/π)·asin(r/2)."""
    for r in (-0.6, 0.0, 0.3, 0.8):
        x, y = correlated_normals(r, 20000, seed=1)
        rho, n = stats.spearman(x, y)
        assert n == 20000
        assert rho == pytest.approx(6 / math.pi * math.asin(r / 2), abs=0.02)


def test_spearman_edge_cases():
    assert stats.spearman([1, 2, 3, 4], [10, 20, 30, 45]) == (1.0, 4)
    assert stats.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == (-1.0, 4)
    rho, n = stats.spearman([1, 1, 1], [1, 2, 3])
    assert math.isnan(rho) and n == 3
    rho, n = stats.spearman([1, np.nan, 3, 4, 5], [2, 1, np.nan, 4, 6])
    assert (rho, n) == (1.0, 3)  # pairs with a NaN on either side are dropped
    assert math.isnan(stats.spearman([1], [2])[0])


def test_spearman_matches_scipy_with_ties_and_missing_values():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(2)
    for trial in range(50):
        n = int(rng.integers(3, 80))
        x = rng.integers(0, 6, n).astype(float)
        y = x + rng.integers(-2, 3, n)
        x[rng.random(n) < 0.1] = np.nan
        expected = scipy_stats.spearmanr(x, y, nan_policy="omit").statistic
        rho, _ = stats.spearman(x, y)
        assert (math.isnan(rho) and math.isnan(expected)) or rho == pytest.approx(
            expected, abs=1e-12), trial


def test_bootstrap_resample_ranks_equal_ranking_the_resampled_vectors():
    """The O(n) resample ranks give exactly what ranking each resample again gives."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, 40).astype(float)
    y = x + rng.integers(0, 3, 40)
    fast = stats._bootstrap_spearman(x, y, 64, np.random.default_rng(7))
    index = np.random.default_rng(7).integers(0, 40, size=(64, 40))
    assert np.array_equal(fast, stats._spearman_rows(x[index], y[index]), equal_nan=True)


def test_bootstrap_interval_covers_the_truth_and_is_seeded():
    x, y = correlated_normals(0.5, 800, seed=4)
    truth = 6 / math.pi * math.asin(0.25)
    first = stats.spearman_estimate(x, y, 500, stats.rng_for(0, "cell"))
    again = stats.spearman_estimate(x, y, 500, stats.rng_for(0, "cell"))
    assert first == again and first.n == 800
    assert first.low < first.value < first.high and first.low < truth < first.high
    assert first.high - first.low < 0.15


def test_mean_intervals():
    rng = np.random.default_rng(5)
    a, b = rng.normal(1.0, 1.0, 400), rng.normal(0.0, 1.0, 300)
    difference = stats.mean_difference_estimate(a, b, 1000, stats.rng_for(1, "d"))
    assert difference.value == pytest.approx(a.mean() - b.mean())
    assert difference.low < 1.0 < difference.high and difference.n == 700
    constant = stats.mean_estimate([2.0, 2.0, np.nan, 2.0], 200, stats.rng_for(1, "m"))
    assert (constant.value, constant.low, constant.high, constant.n) == (2.0, 2.0, 2.0, 3)
    assert stats.mean_estimate([], 100, stats.rng_for(1, "e")).n == 0


# --- the tables on a synthetic sweep ---------------------------------------------------------

STEERED = (1.05, 3.0)
LONELY = (1.1, 4.0)  # steered only for prompt 0: pairs with few of the worst samples


def synthetic_sweep(folder: Path) -> tuple[Path, Path]:
    """10 prompts × 20 seeds: quality rises with Align_X; steering adds exactly +1 quality."""
    rng = np.random.default_rng(6)
    rows, scores = [], []
    for p in range(10):
        for seed in range(20):
            align = 0.67 + 0.02 * rng.standard_normal()
            quality = 10 * align + 0.05 * rng.standard_normal()
            noise = float(rng.standard_normal())
            for alpha, beta in [(1.0, 0.0), STEERED] + ([LONELY] if p == 0 else []):
                rid = f"p{p}s{seed}a{alpha}b{beta}"
                row = manifest_row(rid, f"prompt {p}", seed, alpha, beta, align,
                                   energy=-1000 * align)
                rows.append(row)
                bonus = 0.0 if (alpha, beta) == (1.0, 0.0) else 1.0
                scores.append({"file": row["images"][0], "quality": quality + bonus,
                               "noise": noise})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    score_file = folder / "scores.csv"
    with open(score_file, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "quality", "noise"])
        writer.writeheader()
        writer.writerows(scores)
    return manifest, score_file


@pytest.fixture
def sweep(tmp_path):
    manifest, scores = synthetic_sweep(tmp_path)
    return load_dataset(manifest, [scores])


def baseline(data):
    return [r for r in data.rows if r["alpha"] == 1.0]


def test_table1_correlates_baseline_rows_like_scipy(sweep):
    scipy_stats = pytest.importorskip("scipy.stats")
    cells = {(c.metric, c.block, c.measure): c.estimate
             for c in table1(sweep, baseline(sweep), Options(n_boot=200))}
    assert len(cells) == 2 * 4 * 4
    quality = cells[("quality", "all", "Align_X")]
    assert quality.n == 200 and quality.value > 0.9 and quality.low > 0.8
    assert cells[("quality", "all", "-E_X")].value == pytest.approx(quality.value)
    assert cells[("quality", "all", "r_X")].value == pytest.approx(-quality.value)
    assert math.isnan(cells[("quality", "all", "eta_M")].value)  # constant: no ranking
    rows = baseline(sweep)
    expected = scipy_stats.spearmanr([r["align_up"] for r in rows],
                                     [r["scores"]["noise"] for r in rows]).statistic
    assert cells[("noise", "up", "Align_X")].value == pytest.approx(expected, abs=1e-12)


def test_table2_strata_separate_quality(sweep):
    strata = table2(sweep, baseline(sweep), Options(n_boot=200))
    assert (strata.size, strata.ranked) == (40, 200)
    means = {(m.column, m.stratum): m for m in strata.means}
    assert means[("quality", "top")].mean > means[("quality", "all")].mean > \
        means[("quality", "bottom")].mean
    contrast = strata.contrasts["quality"]
    assert contrast.low > 0 and contrast.n == 80
    assert strata.contrasts["Align_X (all)"].value == pytest.approx(
        means[("Align_X (all)", "top")].mean - means[("Align_X (all)", "bottom")].mean)


def test_table3b_pairs_worst_baseline_samples_with_their_steered_twins(sweep):
    base = baseline(sweep)
    cells = table3b(sweep, base, [r for r in sweep.rows if r["alpha"] != 1.0],
                    Options(n_boot=200))
    by = {(c.target, c.setting, c.metric): c for c in cells}
    gain = by[("quality", STEERED, "quality")]
    assert gain.worst == 40 and gain.estimate.n == 40
    assert gain.estimate.value == pytest.approx(1.0) and gain.estimate.low == pytest.approx(1.0)
    assert by[("quality", STEERED, "noise")].estimate.value == pytest.approx(0.0)
    worst = sorted(base, key=lambda r: r["scores"]["quality"])[:40]
    assert by[("quality", LONELY, "quality")].estimate.n == sum(
        r["prompt"] == "prompt 0" for r in worst)


def test_render_says_when_there_are_no_pairs(tmp_path):
    manifest, scores = synthetic_sweep(tmp_path)
    data = load_dataset(manifest, [scores])
    for row in data.rows:  # only steered rows were scored for "quality"
        if row["alpha"] == 1.0:
            row["scores"] = {"noise": row["scores"]["noise"]}
    markdown, records = render_all(data, Options(n_boot=50))
    assert "no baseline sample has a quality score, so no pairs" in markdown
    assert {"table1.csv", "table2.csv", "table3b.csv"} == set(records)
    with pytest.raises(CorrelateError, match="no baseline rows"):
        render_all(data, Options(n_boot=50), baseline="alpha=7")


def test_a_baseline_swept_at_several_betas_counts_once(sweep):
    twins = [{**row, "run_id": row["run_id"] + "-b5", "beta": 5.0}
             for row in sweep.rows if row["alpha"] == 1.0]  # the same unpatched images
    sweep.rows += twins
    _, records = render_all(sweep, Options(n_boot=20))
    assert {r["n"] for r in records["table1.csv"] if r["metric"] == "quality"} == {200}
    assert {r["n_worst"] for r in records["table3b.csv"]} == {40}


def test_hc_correlate_tables_end_to_end(tmp_path):
    manifest, scores = synthetic_sweep(tmp_path)
    out = tmp_path / "tables"
    result = subprocess.run([sys.executable, str(CORRELATE), "tables", "--manifest",
                             str(manifest), "--scores", str(scores), "--bootstrap", "100",
                             "--out-dir", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for title in ("**Table 1.**", "**Table 2.**", "**Table 3b.**", "| quality | all |",
                  "top − bottom", "Worst 20 % by quality: 40 baseline samples", "α=1.05 β=3"):
        assert title in result.stdout
    with open(out / "table3b.csv") as f:
        rows = list(csv.DictReader(f))
    gain = next(r for r in rows if r["target"] == r["metric"] == "quality"
                and r["alpha"] == "1.05")
    assert float(gain["mean_delta"]) == pytest.approx(1.0) and gain["n_pairs"] == "40"
    assert (out / "table1.csv").is_file() and (out / "tables.md").is_file()


def test_hc_correlate_names_bad_score_files(tmp_path):
    manifest, _ = synthetic_sweep(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,quality\nimages/a.png,0.5\nimages/b.png,high\n")
    result = subprocess.run([sys.executable, str(CORRELATE), "tables", "--manifest",
                             str(manifest), "--scores", str(bad)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert f"{bad}:3: column 'quality' has 'high'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("scorer, message", [
    ("imagereward", "pip install image-reward"),
    ("clipscore", "absent.pt does not exist; it needs a CLIP model"),
    ("aesthetic", "absent.pt does not exist; it needs the LAION aesthetic predictor"),
    ("lpips_diversity", "lpips"),
])
def test_score_without_library_or_weights_is_a_clear_message(tmp_path, scorer, message):
    manifest, _ = synthetic_sweep(tmp_path)
    result = subprocess.run([sys.executable, str(CORRELATE), "score", "--scorer", scorer,
                             "--weights", str(tmp_path / "absent.pt"), "--manifest",
                             str(manifest)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / f"scores_{scorer}.csv").exists()
