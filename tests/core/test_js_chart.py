"""Runs the frontend chart's unit tests (tests/js, node's built-in runner) under pytest."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_chart_model_unit_tests():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the js chart's unit tests need Node.js 18+")
    tests = sorted(str(p) for p in (ROOT / "tests" / "js").glob("*.test.mjs"))
    result = subprocess.run([node, "--test", *tests], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout
