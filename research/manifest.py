"""The sweep's record on disk, and the stability values it takes from each report file.

`manifest.jsonl` holds one JSON row per finished sample. A run's rows are appended in one write
and fsync'ed only after its images and report are saved, so a row always points at files that
exist, and whatever was written survives a crash of the client or of a server. A rerun reads
the file back and skips the runs it already holds; jobs that kept failing go to
`failures.jsonl`, never into the manifest, so a rerun tries them again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("hc_research")

MEASURES = ("energy", "instability", "align", "eta")
REPORT_METADATA_KEY = "hopfield_circulation"
MANIFEST_NAME = "manifest.jsonl"
FAILURES_NAME = "failures.jsonl"
CSV_NAME = "manifest.csv"
# Columns of manifest.csv before the placeholders and measures (images joined by ';').
FIXED_COLUMNS = ("run_id", "batch_index", "batch_size", "prompt_index", "prompt", "seed",
                 "alpha", "beta", "server", "prompt_id", "images", "report", "family", "sample")
_SAMPLE_LABEL = re.compile(r"sample (\d+) \((\w+)\)$")


def run_id(workflow_digest: str, values: dict) -> str:
    """Stable id of one job: the same workflow and placeholder values give the same id on every
    machine and rerun, which is what lets a rerun skip finished work."""
    key = json.dumps({"workflow": workflow_digest, "values": values}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def measure_column(measure: str, group: str) -> str:
    """Flat column name of one stability value, e.g. align_down (SD3: align_early)."""
    return f"{measure}_{group}"


@dataclass
class ReportSamples:
    """Per-block stability values of one report, for the samples of one CFG branch."""

    family: str
    groups: list[str]
    labels: dict[int, str]  # batch index -> the report's sample label
    values: dict[int, dict[str, float | None]]  # batch index -> {"align_all": 0.67, ...}


def read_report(path: Path, branch: str = "cond") -> ReportSamples:
    """Read block_mean/<measure> [samples, groups] of a Stability Report file (save_report's
    format). Only samples of `branch` are kept: the paper's measures are the conditional pass."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        metadata = json.loads((f.metadata() or {}).get(REPORT_METADATA_KEY, "null") or "null")
        if not isinstance(metadata, dict):
            raise ValueError(f"{path}: not a Stability Report file (no '{REPORT_METADATA_KEY}' "
                             "metadata)")
        keys = set(f.keys())
        blocks = {m: f.get_tensor(f"block_mean/{m}") for m in MEASURES
                  if f"block_mean/{m}" in keys}
    groups, labels = list(metadata["groups"]), list(metadata["samples"])
    labels_by_index, values = {}, {}
    for row, label in enumerate(labels):
        match = _SAMPLE_LABEL.search(label)
        if not match or match.group(2) != branch:
            continue
        index = int(match.group(1))
        labels_by_index[index] = label
        values[index] = {measure_column(m, g): _finite(blocks[m][row, col])
                         for m in blocks for col, g in enumerate(groups)}
    return ReportSamples(metadata.get("family", ""), groups, labels_by_index, values)


def _finite(value: float | np.floating) -> float | None:
    """JSON has no NaN: a block the probe did not record is null."""
    value = float(value)
    return value if math.isfinite(value) else None


class Manifest:
    """Append-only, crash-safe record of a sweep in `out_dir`; safe to share between threads."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / MANIFEST_NAME
        self.failures_path = self.out_dir / FAILURES_NAME
        self._lock = threading.Lock()

    def completed_runs(self) -> set[str]:
        """Run ids whose every batch row is on disk (a run cut off between rows is redone)."""
        counts: dict[str, int] = {}
        sizes: dict[str, int] = {}
        for row in load_rows(self.path):
            counts[row["run_id"]] = counts.get(row["run_id"], 0) + 1
            sizes[row["run_id"]] = int(row.get("batch_size") or 1)
        return {rid for rid, n in counts.items() if n >= sizes[rid]}

    def append(self, rows: list[dict]) -> None:
        """All rows of one run in one write, made durable before returning."""
        self._append(self.path, rows)

    def record_failure(self, row: dict) -> None:
        self._append(self.failures_path, [row])

    def _append(self, path: Path, rows: list[dict]) -> None:
        text = "".join(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"
                       for row in rows)
        with self._lock:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(path, "a+", encoding="utf-8") as f:
                if f.tell() and not _ends_with_newline(path):
                    f.write("\n")  # a torn last line from a crash stays on its own line
                f.write(text)
                f.flush()
                os.fsync(f.fileno())

    def write_csv(self) -> Path:
        """manifest.csv, rewritten from the JSONL: placeholders and measures as flat columns."""
        rows = load_rows(self.path)
        params = _ordered_union(row.get("params", {}) for row in rows)
        measures = _ordered_union({k: None for k in row if _is_measure(k)} for row in rows)
        path = self.out_dir / CSV_NAME
        tmp = path.with_suffix(".csv.tmp")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow([*FIXED_COLUMNS, *params, *measures])
            for row in rows:
                fixed = [";".join(row[c]) if c == "images" else row.get(c) for c in FIXED_COLUMNS]
                writer.writerow([*fixed, *(row.get("params", {}).get(p) for p in params),
                                 *(row.get(m) for m in measures)])
        os.replace(tmp, path)
        return path


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _is_measure(key: str) -> bool:
    return key.split("_", 1)[0] in MEASURES and "_" in key


def _ordered_union(dicts) -> list[str]:
    keys: dict[str, None] = {}
    for d in dicts:
        keys.update(dict.fromkeys(d))
    return list(keys)


def load_rows(path: Path) -> list[dict]:
    """The manifest's rows, last copy of each (run_id, batch_index) kept. A line that is not
    JSON (torn by a crash mid-write) is skipped with a warning naming it."""
    path = Path(path)
    if not path.exists():
        return []
    rows: dict[tuple[str, int], dict] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: skipping a line that is not JSON (torn write?)", path, number)
                continue
            if not isinstance(row, dict) or "run_id" not in row:
                raise ValueError(f"{path}:{number}: not a manifest row (no run_id)")
            rows[(row["run_id"], int(row.get("batch_index", 0)))] = row
    return list(rows.values())
