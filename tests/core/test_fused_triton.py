"""Runs tests/core/fused_kernel_cases.py (the fused Triton kernel against float64 references),
tests/core/eta_kernel_cases.py (the symmetry-index kernel) and
tests/core/stability_kernel_cases.py (the Stability Probe's kernel) under Triton's CPU
interpreter, in a subprocess with TRITON_INTERPRET=1.

A subprocess because Triton fixes interpreted-or-compiled at its first import in a process: the
interpreter then never leaks into the rest of a session (on a GPU machine, host tests compile
the real kernel). Skipped with the reason when Triton is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

CASES = [Path(__file__).with_name(name)
         for name in ("fused_kernel_cases.py", "eta_kernel_cases.py",
                      "stability_kernel_cases.py")]
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="triton is not installed (pip install triton): the fused kernel is "
                    "optional and the two-call path is tested without it")
def test_fused_kernel_under_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *map(str, CASES), "-q", "-p", "no:cacheprovider",
         "--rootdir", str(REPO_ROOT)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else "(no output)"
    assert run.returncode == 0, f"interpreter cases failed: {summary}\n{run.stdout[-6000:]}" \
        f"\n{run.stderr[-2000:]}"
    assert " passed" in summary and "skipped" not in summary, summary
    print(summary)
