"""Tests of the research command-line tools (research/, scripts/hc_sweep.py, hc_correlate.py).

Helpers shared by the test modules: a Stability Report file in save_report's format, written
with safetensors' numpy API, and a synthetic manifest with known stability–score relations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SDXL_GROUPS = ["down", "mid", "up", "all"]
MEASURES = ("energy", "instability", "align", "eta")


def write_report(path: Path, values: np.ndarray, labels: list[str],
                 groups: list[str] = SDXL_GROUPS, family: str = "sdxl") -> None:
    """values: [samples, groups, 4 measures], saved as block_mean/<measure> like save_report."""
    from safetensors.numpy import save_file

    tensors = {f"block_mean/{m}": np.ascontiguousarray(values[..., i], dtype=np.float32)
               for i, m in enumerate(MEASURES)}
    tensors["layer_mean/align"] = np.zeros((len(labels), 3), dtype=np.float32)
    metadata = {"family": family, "samples": labels, "groups": groups,
                "measures": list(MEASURES), "run": 1}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"hopfield_circulation": json.dumps(metadata)})


def manifest_row(run_id: str, prompt: str, seed: int, alpha: float, beta: float,
                 align: float, energy: float = -100.0, batch_index: int = 0) -> dict:
    """A manifest row as the sweep writes it, with one image and SDXL block values."""
    values = {}
    for group in SDXL_GROUPS:
        values |= {f"energy_{group}": energy, f"instability_{group}": 1 - align,
                   f"align_{group}": align, f"eta_{group}": 0.5}
    return {"run_id": run_id, "batch_index": batch_index, "batch_size": 1, "prompt_index": 0,
            "prompt": prompt, "seed": seed, "alpha": alpha, "beta": beta, "params": {},
            "server": "http://127.0.0.1:1", "prompt_id": "p", "report": None,
            "images": [f"images/{run_id}-9-{batch_index:02d}.png"], "family": "sdxl",
            "groups": SDXL_GROUPS, "sample": f"sample {batch_index} (cond)", **values}
