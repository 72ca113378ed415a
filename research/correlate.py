"""Join a sweep's manifest with the user's score files, and pick the baseline rows.

Score files are CSVs with a `file` column (an image path or just its name) and one column per
metric; they match manifest rows on the image's file name, so scores computed anywhere (another
machine, another tool) join as long as the names are kept. A sample without a score, or a score
without a sample, is counted and reported, never silently dropped.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .manifest import load_rows

log = logging.getLogger("hc_research")

STEERING = ("alpha", "beta")  # what differs between a baseline row and its steered pairs


class CorrelateError(ValueError):
    """Bad input to the tables; the message names the file and line."""


@dataclass
class Dataset:
    """Manifest rows, each with a "scores" dict, and what the tables are computed over."""

    rows: list[dict]
    metrics: list[str]
    groups: list[str]  # block groups in report order, e.g. down, mid, up, all

    def measure(self, rows: list[dict], column: str) -> np.ndarray:
        return np.array([_number(row.get(column)) for row in rows])

    def metric(self, rows: list[dict], metric: str) -> np.ndarray:
        return np.array([_number(row["scores"].get(metric)) for row in rows])


def _number(value) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _basename(path: str) -> str:
    return re.split(r"[\\/]", path.strip())[-1]


def read_scores(paths: list[Path], metrics: list[str] | None = None
                ) -> tuple[dict[str, dict[str, float]], list[str]]:
    """file name -> {metric: value}, and the metric names in file order."""
    scores: dict[str, dict[str, float]] = {}
    source_of: dict[str, Path] = {}
    for path in paths:
        for metric in _read_score_file(Path(path), metrics, scores):
            if metric in source_of:
                raise CorrelateError(f"metric '{metric}' is in both {source_of[metric]} and "
                                     f"{path}; rename one column")
            source_of[metric] = Path(path)
    missing = [m for m in metrics or [] if m not in source_of]
    if missing:
        raise CorrelateError(f"--metrics {', '.join(missing)}: not a column of any score file")
    return scores, list(source_of)


def _read_score_file(path: Path, wanted: list[str] | None,
                     scores: dict[str, dict[str, float]]) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as exc:
        raise CorrelateError(f"{path}: cannot read the score file: {exc}") from exc
    reader = csv.DictReader(lines)
    columns = reader.fieldnames or []
    if "file" not in columns:
        raise CorrelateError(f"{path}: no 'file' column (columns: {columns})")
    metrics = [c for c in columns if c != "file" and (wanted is None or c in wanted)]
    seen: set[str] = set()
    for row in reader:
        name = _basename(row["file"] or "")
        if not name or name in seen:
            raise CorrelateError(f"{path}:{reader.line_num}: "
                                 + (f"'{name}' is listed twice" if name else "empty 'file'"))
        seen.add(name)
        entry = scores.setdefault(name, {})
        for metric in metrics:
            entry[metric] = _parse_score(row[metric], path, reader.line_num, metric)
    return metrics


def _parse_score(text: str | None, path: Path, line: int, metric: str) -> float:
    text = (text or "").strip()
    if text.lower() in ("", "nan", "na", "none"):
        return math.nan
    try:
        return float(text)
    except ValueError as exc:
        raise CorrelateError(f"{path}:{line}: column '{metric}' has '{text}', not a number "
                             "(pick the metric columns with --metrics)") from exc


def load_dataset(manifest: Path, score_files: list[Path],
                 metrics: list[str] | None = None) -> Dataset:
    rows = load_rows(manifest)
    if not rows:
        raise CorrelateError(f"{manifest}: no rows (run scripts/hc_sweep.py first)")
    scores, names = read_scores(score_files, metrics)
    if not names:
        raise CorrelateError("no metric columns in the score files")
    matched: set[str] = set()
    unscored = 0
    for row in rows:
        hits = [_basename(p) for p in row.get("images", []) if _basename(p) in scores]
        row["scores"] = scores[hits[0]] if hits else {}
        matched.update(hits[:1])
        unscored += not hits
    if not matched:
        example = next((_basename(p) for row in rows for p in row.get("images", [])), "?")
        raise CorrelateError("no score file name matches an image of the manifest (the "
                             f"'file' column must hold the images' names, e.g. {example})")
    if unscored:
        log.warning("%d of %d manifest rows have no score", unscored, len(rows))
    if len(scores) > len(matched):
        log.warning("%d scored files are not in the manifest", len(scores) - len(matched))
    return Dataset(rows, names, _groups(rows, manifest))


def _groups(rows: list[dict], manifest: Path) -> list[str]:
    families = {row.get("family") for row in rows if row.get("family")}
    if len(families) > 1:
        raise CorrelateError(f"{manifest}: mixes model families {sorted(families)}; their "
                             "blocks differ, so correlate them apart")
    groups: dict[str, None] = {}
    for row in rows:
        groups.update(dict.fromkeys(row.get("groups") or []))
    if not groups:
        raise CorrelateError(f"{manifest}: no row carries stability values (did the workflow "
                             "have a Stability Report with save_file on?)")
    return list(groups)


def baseline_rule(spec: str):
    """A predicate on rows: 'auto' is any row without circulation (α = 1 or β = 0, which the
    pack runs as the unpatched model, or neither placeholder swept); else name=value
    conditions joined by commas, all of which must hold (e.g. 'alpha=1' or 'alpha=1,beta=0')."""
    if spec == "auto":
        return lambda row: (_same(row.get("alpha"), "1") or _same(row.get("beta"), "0")
                            or (row.get("alpha") is None and row.get("beta") is None))
    conditions = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise CorrelateError(f"--baseline '{spec}': expected name=value[,name=value]")
        conditions.append((name.strip(), value.strip()))
    return lambda row: all(_same(_value(row, name), value) for name, value in conditions)


def _value(row: dict, name: str):
    return row[name] if name in row else (row.get("params") or {}).get(name)


def _same(value, text: str) -> bool:
    if value is None:
        return False
    try:
        return math.isclose(float(value), float(text), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return str(value) == text


def pair_key(row: dict) -> tuple:
    """What a steered row shares with its baseline: everything but α and β."""
    params = tuple(sorted((k, str(v)) for k, v in (row.get("params") or {}).items()))
    return row.get("prompt"), row.get("seed"), row.get("batch_index", 0), params


def one_per_pair(rows: list[dict]) -> list[dict]:
    """The first row of each pair key: α = 1 swept at several β (or β = 0 at several α) is the
    same unpatched image several times, which must count once."""
    first: dict[tuple, dict] = {}
    for row in rows:
        first.setdefault(pair_key(row), row)
    return list(first.values())


def setting_of(row: dict) -> tuple:
    return tuple(row.get(name) for name in STEERING)
