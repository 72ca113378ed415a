"""Core tier: placeholders and the job grid, the manifest's resume logic and report reading, and
the sweep client against a scripted stand-in for ComfyUI's HTTP API on 127.0.0.1 (the real
servers are in test_sweep_servers.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from hopfield_circulation.research.comfy_api import ComfyClient
from hopfield_circulation.research.manifest import Manifest, load_rows, read_report, run_id
from hopfield_circulation.research.sweep import SweepSettings, pending_jobs, run_sweep
from hopfield_circulation.research.workflow import (
    CUSTOM_POINT,
    SweepError,
    Template,
    parse_assignments,
    parse_floats,
    parse_seeds,
    plan_jobs,
    read_prompts,
)

from . import SDXL_GROUPS, write_report

REPO_ROOT = Path(__file__).resolve().parents[2]
SWEEP = REPO_ROOT / "scripts" / "hc_sweep.py"

GRAPH = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"}},
    "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}", "clip": ["1", 1]}},
    "3": {"class_type": "KSampler", "inputs": {"seed": "{{seed}}", "cfg": "{{cfg}}",
                                               "model": ["1", 0]}},
    "4": {"class_type": "HopfieldCirculation_SkewCirculation",
          "inputs": {"alpha": "{{alpha}}", "beta": "{{ beta }}", "model": ["1", 0]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "sweep/{{run_id}}",
                                                "images": ["8", 0]}},
    "12": {"class_type": "HopfieldCirculation_StabilityReport",
           "inputs": {"save_file": True, "filename_prefix": "sweep/{{run_id}}",
                      "probe": ["5", 1]}},
}


@pytest.fixture
def template():
    return Template(json.loads(json.dumps(GRAPH)), "workflow_api.json")


def test_fill_types_whole_placeholders_and_substitutes_embedded_ones(template):
    graph = template.fill({"prompt": "a cat", "seed": 7, "cfg": 5.5, "alpha": 1.05,
                           "beta": 3.0, "run_id": "abc"})
    assert graph["3"]["inputs"] == {"seed": 7, "cfg": 5.5, "model": ["1", 0]}
    assert graph["4"]["inputs"]["beta"] == 3.0  # spaces inside the braces are allowed
    assert graph["9"]["inputs"]["filename_prefix"] == "sweep/abc"
    assert graph["2"]["inputs"] == {"text": "a cat", "clip": ["1", 1]}
    assert template.graph["3"]["inputs"]["seed"] == "{{seed}}"  # the template is untouched


def test_placeholder_mismatches_are_errors_naming_node_and_flag(template):
    with pytest.raises(SweepError) as missing:
        plan_jobs(template, ["a"], None, [1.0], [0.0], {"cfg": 5})
    assert "{{seed}} in node 3 (KSampler) input 'seed' has no value: pass --seeds" in \
        str(missing.value)
    assert str(missing.value).startswith("workflow_api.json:")
    with pytest.raises(SweepError) as unused:
        plan_jobs(template, ["a"], [0], [1.0], [0.0], {"cfg": 5, "steps": 30})
    assert "--set steps given, but the workflow has no {{steps}} placeholder" in str(unused.value)
    with pytest.raises(SweepError, match="--prompts given, but the workflow has no {{prompt}}"):
        plan_jobs(Template({"1": GRAPH["3"]}, "w"), ["a"], [0], None, None, {"cfg": 5})
    with pytest.raises(SweepError, match=r"--set cfg=VALUE"):
        plan_jobs(template, ["a"], [0], [1.0], [0.0], {})


def test_a_workflow_without_a_saved_report_is_warned_about(template):
    assert template.report_warnings() == []
    graph = json.loads(json.dumps(GRAPH))
    graph["12"]["inputs"]["save_file"] = False
    [warning] = Template(graph, "w").report_warnings()
    assert "node 12 (Stability Report) has save_file off" in warning
    del graph["12"]
    assert "no Stability Report node" in Template(graph, "w").report_warnings()[0]


def test_ui_workflows_and_non_workflows_are_refused(tmp_path):
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(SweepError, match="Export \\(API\\)"):
        Template.load(ui)
    broken = tmp_path / "broken.json"
    broken.write_text('{"1": {"inputs": {}}}')
    with pytest.raises(SweepError, match=r"broken.json: not an API-format workflow.*'1'"):
        Template.load(broken)


def test_value_parsers():
    assert parse_seeds("0-3,7, 2") == [0, 1, 2, 3, 7]
    for bad in ("3-1", "x", "-1"):
        with pytest.raises(SweepError, match="--seeds"):
            parse_seeds(bad)
    assert parse_assignments(["cfg=5", "denoise=0.5", "name=a=b", "flag=True"]) == {
        "cfg": 5, "denoise": 0.5, "name": "a=b", "flag": True}
    with pytest.raises(SweepError, match="--set seed: use --seeds"):
        parse_assignments(["seed=1"])
    with pytest.raises(SweepError, match="expected name=value"):
        parse_assignments(["cfg"])
    assert parse_floats("1, 1.05,1", "--alpha") == [1.0, 1.05]
    for bad in ("1,x", "nan", ""):
        with pytest.raises(SweepError, match="--alpha"):
            parse_floats(bad, "--alpha")


def test_prompt_files(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("a cat\n\n  a dog  \n")
    assert read_prompts(text) == ["a cat", "a dog"]
    captions = tmp_path / "coco.csv"
    captions.write_text('id,caption\n1,"a man, riding"\n2,\n')
    with pytest.raises(SweepError, match=r"coco.csv: no 'prompt' column \(columns: \['id', "):
        read_prompts(captions)
    with pytest.raises(SweepError, match=r"coco.csv:3: empty 'caption'"):
        read_prompts(captions, "caption")
    captions.write_text('id,caption\n1,"a man, riding"\n')
    assert read_prompts(captions, "caption") == ["a man, riding"]


def test_grid_and_stable_run_ids(template):
    jobs = plan_jobs(template, ["a", "b", "a"], [0, 1], [1.0, 1.05], [0.0, 3.0], {"cfg": 5})
    assert len(jobs) == 2 * 2 * 2 * 2  # the repeated prompt is one job
    again = plan_jobs(template, ["a", "b"], [0, 1], [1.0, 1.05], [0.0, 3.0], {"cfg": 5})
    assert [j.run_id for j in jobs] == [j.run_id for j in again]
    assert jobs[0].values == {"prompt": "a", "seed": 0, "alpha": 1.0, "beta": 0.0, "cfg": 5}
    edited = Template({**template.graph, "1": {"class_type": "CheckpointLoaderSimple",
                                               "inputs": {"ckpt_name": "other"}}}, "w")
    assert plan_jobs(edited, ["a"], [0], [1.0], [0.0], {"cfg": 5})[0].run_id != jobs[0].run_id
    assert run_id("w", {"seed": 1}) == run_id("w", {"seed": 1}) != run_id("w", {"seed": 2})


# --- the manifest ----------------------------------------------------------------------------


def row(rid: str, batch_index: int = 0, batch_size: int = 1, **extra) -> dict:
    return {"run_id": rid, "batch_index": batch_index, "batch_size": batch_size,
            "images": [f"images/{rid}.png"], "params": {}, **extra}


def test_resume_skips_complete_runs_only(tmp_path, template, caplog):
    manifest = Manifest(tmp_path)
    jobs = plan_jobs(template, ["a"], [0, 1, 2], [1.0], [0.0], {"cfg": 5})
    manifest.append([row(jobs[0].run_id)])
    manifest.append([row(jobs[1].run_id, 0, 2)])  # cut off before its second batch row
    with open(manifest.path, "a") as f:
        f.write('{"run_id": "torn')  # a crash in the middle of a write
    assert [j.run_id for j in pending_jobs(jobs, manifest)] == [j.run_id for j in jobs[1:]]
    assert "manifest.jsonl:3: skipping a line that is not JSON" in caplog.text
    manifest.append([row(jobs[1].run_id, 0, 2), row(jobs[1].run_id, 1, 2)])
    assert [j.run_id for j in pending_jobs(jobs, manifest)] == [jobs[2].run_id]
    lines = manifest.path.read_text().splitlines()
    assert lines[2] == '{"run_id": "torn' and json.loads(lines[3])["run_id"] == jobs[1].run_id
    assert len(load_rows(manifest.path)) == 3  # the rewritten batch row counts once


def test_read_report_takes_the_cond_samples(tmp_path):
    values = np.arange(3 * 4 * 4, dtype=float).reshape(3, 4, 4)
    values[1, 2, 3] = np.nan  # eta of the up block not recorded
    labels = ["sample 0 (cond)", "sample 1 (cond)", "sample 0 (uncond)"]
    write_report(tmp_path / "r.safetensors", values, labels)
    report = read_report(tmp_path / "r.safetensors")
    assert report.family == "sdxl" and report.groups == SDXL_GROUPS
    assert report.labels == {0: "sample 0 (cond)", 1: "sample 1 (cond)"}
    assert report.values[1]["align_mid"] == values[1, 1, 2]
    assert report.values[1]["eta_up"] is None
    assert report.values[0]["energy_all"] == values[0, 3, 0]
    uncond = read_report(tmp_path / "r.safetensors", "uncond")
    assert uncond.values[0]["instability_down"] == values[2, 0, 1]


def test_manifest_csv_flattens_placeholders_and_measures(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.append([row("r1", prompt="a, b", seed=3, params={"cfg": 5}, align_all=0.6,
                         align_down=0.5)])
    header, first = manifest.write_csv().read_text().splitlines()[:2]
    assert header.endswith(",images,report,family,sample,cfg,align_all,align_down")
    assert first.startswith('r1,0,1,,"a, b",3,') and first.endswith(",images/r1.png,,,,5,0.6,0.5")


# --- the sweep client against a scripted server ----------------------------------------------


class FakeComfy(BaseHTTPRequestHandler):
    """Just enough of ComfyUI: jobs whose seed is in `failing` end in an execution error; the
    others save one image and one report (served back through /view)."""

    history: dict
    failing: set
    report: bytes
    queued: list

    def log_message(self, *args):
        pass

    def _reply(self, body: bytes, status: int = 200):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/system_stats":
            return self._reply(b"{}")
        if url.path.startswith("/history/"):
            pid = url.path.rsplit("/", 1)[1]
            return self._reply(json.dumps({pid: self.history[pid]}).encode())
        query = parse_qs(url.query)
        if query["subfolder"] != ["sweep"]:
            return self._reply(b"", 404)
        return self._reply(self.report if query["filename"][0].endswith(".safetensors")
                           else b"\x89PNG fake")

    def do_POST(self):
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/prompt":
            pid, graph = payload["prompt_id"], payload["prompt"]
            self.queued.append(graph)
            self.history[pid] = self._entry(graph)
        self._reply(b"{}")

    def _entry(self, graph):
        if graph["3"]["inputs"]["seed"] in self.failing:
            return {"status": {"status_str": "error", "completed": False, "messages": [
                ["execution_error", {"node_id": "3", "node_type": "KSampler",
                                     "exception_type": "OOM", "exception_message": "boom"}]]}}
        name = graph["9"]["inputs"]["filename_prefix"].split("/")[1]
        return {"status": {"status_str": "success", "completed": True}, "outputs": {
            "9": {"images": [{"filename": f"{name}_00001_.png", "subfolder": "sweep",
                              "type": "output"},
                             {"filename": "preview.png", "subfolder": "", "type": "temp"}]},
            "12": {"text": [f"report\nSaved: /srv/output/sweep/{name}_00001_.safetensors"]}}}


@pytest.fixture
def fake_server(tmp_path):
    report = tmp_path / "served.safetensors"
    write_report(report, np.full((1, 4, 4), 0.25), ["sample 0 (cond)"])
    handler = type("Handler", (FakeComfy,), {"history": {}, "failing": {2}, "queued": [],
                                             "report": report.read_bytes()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_sweep_saves_files_records_failures_apart_and_resumes(tmp_path, template, fake_server):
    url, handler = fake_server
    out = tmp_path / "out"
    jobs = plan_jobs(template, ["a cat"], [0, 1, 2], [1.05], [3.0], {"cfg": 5})
    settings = SweepSettings(retries=1, poll_interval=0.01)
    outcome = run_sweep(template, jobs, [url], out, settings)
    assert outcome.finished == 2 and [j.values["seed"] for j in outcome.failed] == [2]
    rows = load_rows(out / "manifest.jsonl")
    assert [r["seed"] for r in rows] == [0, 1]
    first = rows[0]
    assert first["images"] == [f"images/{first['run_id']}-9-00.png"]
    assert (out / first["images"][0]).read_bytes() == b"\x89PNG fake"
    assert first["report"] == f"reports/{first['run_id']}.safetensors"
    assert first["align_all"] == 0.25 and first["sample"] == "sample 0 (cond)"
    assert first["params"] == {"cfg": 5} and first["server"] == url
    failure = json.loads((out / "failures.jsonl").read_text())
    assert failure["values"]["seed"] == 2 and len(failure["errors"]) == 2
    assert "node 3 (KSampler): OOM: boom" in failure["errors"][0]
    queued = len(handler.queued)
    assert queued == 4  # two jobs, and the failing one twice
    handler.failing.clear()
    assert [j.values["seed"] for j in pending_jobs(jobs, Manifest(out))] == [2]
    outcome = run_sweep(template, pending_jobs(jobs, Manifest(out)), [url], out, settings)
    assert outcome.finished == 1 and len(handler.queued) == queued + 1
    assert sorted(r["seed"] for r in load_rows(out / "manifest.jsonl")) == [0, 1, 2]


def test_client_calls_are_bounded_when_nothing_answers():
    assert not ComfyClient("http://127.0.0.1:9", timeout=2).alive()


def write_workflow(tmp_path: Path) -> Path:
    path = tmp_path / "workflow_api.json"
    path.write_text(json.dumps(GRAPH))
    return path


def test_hc_sweep_with_no_server_left_lists_what_remains(tmp_path):
    (tmp_path / "prompts.txt").write_text("a cat\na dog\n")
    args = [sys.executable, str(SWEEP), str(write_workflow(tmp_path)), "--prompts",
            str(tmp_path / "prompts.txt"), "--seeds", "0-1", "--alpha", "1.05", "--beta", "3",
            "--set", "cfg=5", "--server", "http://127.0.0.1:9", "--out", str(tmp_path / "out")]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert "http://127.0.0.1:9: not reachable" in result.stderr
    assert "no server is reachable any more; 4 jobs remain" in result.stderr
    assert "'prompt': 'a dog', 'seed': 1" in result.stderr
    dry = subprocess.run([*args, "--dry-run"], capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0 and "4 jobs, 0 already in" in dry.stderr
    without_cfg = [a for a in args if a not in ("--set", "cfg=5")]
    bad = subprocess.run(without_cfg, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "{{cfg}} in node 3 (KSampler) input 'cfg'" in bad.stderr


def test_research_imports_neither_torch_nor_comfyui():
    code = ("import sys; import research.sweep, research.render, research.scorers; "
            "bad = {'torch', 'comfy', 'folder_paths', 'scipy'} & set(sys.modules); "
            "sys.exit(f'imported {bad}' if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout


def test_swept_alpha_and_beta_override_the_paper_point(tmp_path):
    """A workflow exported from today's UI carries operating_point 'paper point for this model';
    with α or β swept, the node must steer with the swept values."""
    graph = json.loads(json.dumps(GRAPH))
    graph["4"]["inputs"]["operating_point"] = "paper point for this model"
    graph["13"] = {"class_type": "HopfieldCirculation_AdaptiveCirculation",
                   "inputs": {"alpha": 1.2, "beta": 5.0,
                              "operating_point": "paper point for this model"}}
    path = tmp_path / "workflow_api.json"
    path.write_text(json.dumps(graph))
    loaded = Template.load(path).graph
    assert loaded["4"]["inputs"]["operating_point"] == CUSTOM_POINT
    assert loaded["13"]["inputs"]["operating_point"] == "paper point for this model"  # not swept


@pytest.mark.host
def test_custom_point_is_the_nodes_own_word(comfy_host):
    from hopfield_circulation.nodes.operating_points import CUSTOM

    assert CUSTOM_POINT == CUSTOM
