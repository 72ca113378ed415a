"""End to end: hc_sweep.py against two real ComfyUI servers with the tiny SDXL checkpoint; one
is stopped midway, then the other, and a rerun resumes and completes without losing or
redoing a finished sample; then hc_correlate.py builds the tables from the result."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from e2e.server import ComfyServer
from e2e.tiny_checkpoints import TINY_SDXL

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
SWEEP = REPO_ROOT / "scripts" / "hc_sweep.py"
CORRELATE = REPO_ROOT / "scripts" / "hc_correlate.py"
JOBS = 2 * 3 * 2  # prompts × seeds × alphas


def node(cls: str, **inputs) -> dict:
    return {"class_type": cls, "inputs": inputs}


def sweep_workflow() -> dict:
    """Probe → Skew (α, β) → KSampler (seed) → decode → save, with the Stability Report saving
    its file. The tiny checkpoint has no text encoder, so {{prompt}} goes to a text preview."""
    return {
        "1": node("CheckpointLoaderSimple", ckpt_name=TINY_SDXL),
        "2": node("HCTestRandomConditioning", seed=1, tokens=77, width=64, pooled=1280),
        "3": node("HCTestRandomConditioning", seed=2, tokens=77, width=64, pooled=1280),
        "4": node("EmptyLatentImage", width=64, height=64, batch_size=1),
        "5": node("HopfieldCirculation_StabilityProbe", model=["1", 0], basis="value",
                  channels=64, start_percent=0.0, end_percent=1.0, branch="cond",
                  layers="all"),
        "6": node("HopfieldCirculation_SkewCirculation", model=["5", 0], alpha="{{alpha}}",
                  beta="{{beta}}", start_percent=0.0, end_percent=1.0, layers="all",
                  branch="both", space="value"),
        "7": node("KSampler", model=["6", 0], positive=["2", 0], negative=["3", 0],
                  latent_image=["4", 0], seed="{{seed}}", steps=1, cfg=5.0,
                  sampler_name="euler", scheduler="normal", denoise=1.0),
        "8": node("VAEDecode", samples=["7", 0], vae=["1", 2]),
        "9": node("SaveImage", images=["8", 0], filename_prefix="sweep/{{run_id}}"),
        "10": node("HopfieldCirculation_StabilityReport", probe=["5", 1], latent=["7", 0],
                   image=["8", 0], save_file=True, filename_prefix="sweep/{{run_id}}"),
        "11": node("StringConcatenate", string_a="{{prompt}}", string_b="", delimiter=""),
        "12": node("PreviewAny", source=["11", 0]),
    }


@pytest.fixture(scope="module")
def servers(comfy_host, tmp_path_factory):
    pair = [ComfyServer(comfy_host, tmp_path_factory.mktemp(f"comfy_{name}")) for name in "ab"]
    errors = []

    def start(server):
        try:
            server.start()
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in pair]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        for server in pair:
            server.stop()
        raise errors[0]
    yield pair
    for server in pair:
        server.stop()


def manifest_rows(out: Path) -> list[dict]:
    path = out / "manifest.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_rows(out: Path, count: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(manifest_rows(out)) < count:
        assert process.poll() is None, f"sweep exited early: {process.communicate()}"
        assert time.monotonic() < deadline, f"fewer than {count} rows after {timeout} s"
        time.sleep(0.05)


def assert_files_present(out: Path, rows: list[dict]) -> None:
    for row in rows:
        assert row["images"] and all((out / p).stat().st_size > 0 for p in row["images"])
        assert (out / row["report"]).stat().st_size > 0
        assert row["family"] == "sdxl" and row["sample"] == "sample 0 (cond)"
        assert {"align_down", "align_mid", "align_up", "align_all", "energy_all",
                "instability_all", "eta_all"} <= row.keys()
        assert isinstance(row["align_all"], float)


def test_sweep_survives_servers_stopping_and_resumes(servers, tmp_path):
    a, b = servers
    workflow = tmp_path / "workflow_api.json"
    workflow.write_text(json.dumps(sweep_workflow()))
    (tmp_path / "prompts.txt").write_text("a red cube\na blue sphere\n")
    out = tmp_path / "out"
    command = [sys.executable, str(SWEEP), str(workflow), "--prompts",
               str(tmp_path / "prompts.txt"), "--seeds", "0-2", "--alpha", "1.0,1.05",
               "--beta", "3", "--server", a.url, "--server", b.url, "--out", str(out),
               "--poll", "0.05", "--job-timeout", "120"]

    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        wait_for_rows(out, 2, process, timeout=120)
        a.stop()
        wait_for_rows(out, 4, process, timeout=120)
        b.stop()
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    first = manifest_rows(out)
    assert process.returncode == 3, stderr
    assert f"{JOBS - len(first)} jobs remain" in stderr and "rerun the same command" in stderr
    assert len({r["run_id"] for r in first}) == len(first) >= 4
    assert {r["server"] for r in first} <= {a.url, b.url}
    assert_files_present(out, first)
    finished_text = (out / "manifest.jsonl").read_text()

    b.start()  # the same server back; a stays down
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr + b.log()
    assert f"{len(first)} already in" in result.stderr
    assert f"{a.url}: not reachable" in result.stderr
    rows = manifest_rows(out)
    assert (out / "manifest.jsonl").read_text().startswith(finished_text)  # nothing lost
    assert len(rows) == len({r["run_id"] for r in rows}) == JOBS  # nothing done twice
    assert {r["server"] for r in rows[len(first):]} == {b.url}
    assert_files_present(out, rows)
    assert {(r["prompt"], r["seed"], r["alpha"], r["beta"]) for r in rows} == {
        (p, s, alpha, 3.0) for p in ("a red cube", "a blue sphere") for s in range(3)
        for alpha in (1.0, 1.05)}
    with open(out / "manifest.csv") as f:
        assert len(list(csv.DictReader(f))) == JOBS
    assert not (out / "failures.jsonl").exists()

    correlate_the_result(out, rows)


def correlate_the_result(out: Path, rows: list[dict]) -> None:
    """The tables from the real manifest, with a score file keyed by image name."""
    scores = out / "scores.csv"
    with open(scores, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "bytes"])
        writer.writerows((Path(r["images"][0]).name, (out / r["images"][0]).stat().st_size)
                         for r in rows)
    result = subprocess.run([sys.executable, str(CORRELATE), "tables", "--manifest",
                             str(out / "manifest.jsonl"), "--scores", str(scores),
                             "--bootstrap", "50", "--out-dir", str(out / "tables")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "6 baseline samples" in result.stdout and "| bytes | all |" in result.stdout
    assert "α=1.05 β=3" in result.stdout  # table 3b pairs the steered rows with α = 1
    with open(out / "tables" / "table3b.csv") as f:
        assert {r["n_pairs"] for r in csv.DictReader(f)} == {"1"}  # worst 20 % of 6: one
