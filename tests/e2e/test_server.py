"""End-to-end over HTTP: the pack installed in a real ComfyUI server, as a user would have it."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from .server import PACK_DIR_NAME, REPO_ROOT, ComfyServer, newer_host_reason, ui_to_api
from .tiny_checkpoints import TINY_SD3, TINY_SDXL

pytestmark = pytest.mark.e2e

OUR_NODES = {
    "HopfieldCirculation_SkewCirculation": "Skew Circulation",
    "HopfieldCirculation_AdaptiveCirculation": "Adaptive Circulation",
    "HopfieldCirculation_StabilityProbe": "Stability Probe",
    "HopfieldCirculation_StabilityReport": "Stability Report",
    "HopfieldCirculation_StabilityRank": "Stability Rank",
}
WORKFLOWS = sorted(p.stem for p in (REPO_ROOT / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def server(comfy_host, tmp_path_factory):
    srv = ComfyServer(comfy_host, tmp_path_factory.mktemp("comfy_base"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def test_object_info_lists_every_node_with_tooltips(object_info):
    for node_id, title in OUR_NODES.items():
        info = object_info[node_id]
        assert info["display_name"] == title
        assert info["category"].startswith("Hopfield Circulation/")
        assert info["description"]
        assert info["python_module"].endswith(PACK_DIR_NAME)
        for section in ("required", "optional"):
            for name, definition in info["input"].get(section, {}).items():
                assert definition[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert all(info["output_tooltips"]), f"{node_id} has an output without a tooltip"


def test_workflow_templates_lists_every_bundled_workflow(server):
    templates = server.get("/workflow_templates")
    assert sorted(templates[PACK_DIR_NAME]) == WORKFLOWS
    assert len(WORKFLOWS) == 11


# loader -> the inputs that name its model files (absent on the test server)
MODEL_FILE_INPUTS = {
    "CheckpointLoaderSimple": ("ckpt_name",),
    "UNETLoader": ("unet_name",),
    "CLIPLoader": ("clip_name",),
    "DualCLIPLoader": ("clip_name1", "clip_name2"),
    "QuadrupleCLIPLoader": ("clip_name1", "clip_name2", "clip_name3", "clip_name4"),
    "VAELoader": ("vae_name",),
}


@pytest.mark.parametrize("name", WORKFLOWS)
def test_bundled_workflow_validates_except_for_model_files(server, object_info, name):
    """Every node type exists and every widget value is accepted (combo choices such as a
    CLIPLoader's type included); the only errors are the model files this server lacks, one
    for each file every loader names."""
    workflow = json.loads((REPO_ROOT / "workflows" / f"{name}.json").read_text())
    types = {n["type"] for n in workflow["nodes"]} - {"Note"}
    reason = newer_host_reason(types - object_info.keys())
    if reason:
        pytest.skip(reason)
    assert types <= object_info.keys(), f"missing node types: {types - object_info.keys()}"
    status, body = server.post("/prompt", {"prompt": ui_to_api(workflow, object_info)})
    assert status == 400, body
    errors = [
        (node_id, err)
        for node_id, node in body["node_errors"].items()
        for err in node["errors"]
    ]
    assert errors, body
    for node_id, err in errors:
        class_type = body["node_errors"][node_id]["class_type"]
        assert class_type in MODEL_FILE_INPUTS, err
        assert err["type"] == "value_not_in_list" and err["extra_info"]["input_name"] in \
            MODEL_FILE_INPUTS[class_type], err
    expected = {(str(n["id"]), input_name) for n in workflow["nodes"]
                if n["type"] in MODEL_FILE_INPUTS for input_name in MODEL_FILE_INPUTS[n["type"]]}
    reported = {(node_id, err["extra_info"]["input_name"]) for node_id, err in errors}
    assert reported <= expected
    # 0.3.64 checks no value of a V3 node's combo (its type "COMBO", not the list) when a
    # prompt is queued: QuadrupleCLIPLoader's missing files are reported when it runs
    types = {str(n["id"]): n["type"] for n in workflow["nodes"]}
    for node_id, input_name in expected - reported:
        spec = object_info[types[node_id]]["input"]["required"][input_name]
        assert spec[0] == "COMBO", (node_id, input_name)


TINY = {
    # checkpoint, latent node, conditioning shape (tokens, width, pooled), scheduler, settings
    "sdxl": (TINY_SDXL, "EmptyLatentImage", (77, 64, 1280), "normal",
             {"skew_space": "input", "probe_basis": "input", "alpha": 1.05, "beta": 3.0}),
    "sd3": (TINY_SD3, "EmptySD3LatentImage", (154, 64, 64), "sgm_uniform",
            {"skew_space": "value", "probe_basis": "value", "alpha": 0.95, "beta": 3.0}),
}


def tiny_graph(family: str = "sd3", batch_size: int = 1, seed: int = 7) -> dict:
    """Checkpoint -> Probe -> Skew -> Adaptive -> KSampler (+ a baseline sampler), decoded,
    reported and stitched side by side; conditioning from the test-only node."""
    ckpt, latent_node, (tokens, width, pooled), scheduler, cfg = TINY[family]

    def node(cls, **inputs):
        return {"class_type": cls, "inputs": inputs}

    def conditioning(seed):
        return node("HCTestRandomConditioning", seed=seed, tokens=tokens, width=width,
                    pooled=pooled)

    def ksampler(model):
        return node("KSampler", model=model, positive=["2", 0], negative=["3", 0],
                    latent_image=["4", 0], seed=seed, steps=3, cfg=5.0, sampler_name="euler",
                    scheduler=scheduler, denoise=1.0)

    return {
        "1": node("CheckpointLoaderSimple", ckpt_name=ckpt),
        "2": conditioning(1),
        "3": conditioning(2),
        "4": node(latent_node, width=128, height=128, batch_size=batch_size),
        "5": node("HopfieldCirculation_StabilityProbe", model=["1", 0],
                  basis=cfg["probe_basis"], channels=16, start_percent=0.0, end_percent=1.0,
                  branch="cond", layers="all"),
        "6": node("HopfieldCirculation_SkewCirculation", model=["5", 0], alpha=cfg["alpha"],
                  beta=cfg["beta"], start_percent=0.0, end_percent=1.0, layers="all",
                  branch="both", space=cfg["skew_space"]),
        "7": node("HopfieldCirculation_AdaptiveCirculation", model=["6", 0], alpha=1.2,
                  beta=5.0, start_percent=0.0, end_percent=1.0, layers="all", branch="both",
                  space="value", eta_aggregation="per sample"),
        "8": ksampler(["7", 0]),
        "9": ksampler(["1", 0]),
        "10": node("VAEDecode", samples=["8", 0], vae=["1", 2]),
        "11": node("VAEDecode", samples=["9", 0], vae=["1", 2]),
        "12": node("HopfieldCirculation_StabilityReport", probe=["5", 1], latent=["8", 0],
                   image=["10", 0], save_file=True, filename_prefix=f"hopfield/e2e_{family}"),
        "13": node("ImageStitch", image1=["11", 0], image2=["10", 0], direction="right",
                   match_image_size=True, spacing_width=8, spacing_color="white"),
        "14": node("SaveImage", images=["13", 0],
                   filename_prefix=f"hopfield/e2e_{family}_compare"),
        "15": node("SaveImage", images=["12", 0],
                   filename_prefix=f"hopfield/e2e_{family}_heatmaps"),
        "16": node("HopfieldCirculation_StabilityRank", probe=["5", 1], latent=["8", 0],
                   image=["10", 0], block="all", order="most stable first", k=1),
        "17": node("SaveImage", images=["16", 1],
                   filename_prefix=f"hopfield/e2e_{family}_most_stable"),
    }


GROUPS = {"sdxl": {"down", "mid", "up"}, "sd3": {"early", "middle", "late"}}


@pytest.mark.parametrize("family", sorted(TINY))
def test_tiny_checkpoint_runs_through_every_node(server, family):
    history = server.run_prompt(tiny_graph(family, batch_size=2))
    outputs = history["outputs"]
    compare = outputs["14"]["images"]
    assert len(compare) == 2 and compare[0]["filename"].startswith(f"e2e_{family}_compare")
    assert outputs["15"]["images"]
    report_ui = outputs["12"]
    chart = report_ui["hopfield_align_chart"][0]
    assert chart["family"] == family
    assert [s["label"] for s in chart["samples"]] == ["sample 0 (cond)", "sample 1 (cond)"]
    layers = chart["samples"][0]["layers"]
    assert layers and {layer["group"] for layer in layers} <= GROUPS[family]
    assert all(isinstance(layer["align"], float) for layer in layers)
    text = report_ui["text"][0]
    saved = Path(text.rsplit("Saved: ", 1)[1].strip())
    assert saved.is_file() and saved.suffix == ".safetensors"
    assert str(saved).startswith(str(server.base / "output"))
    for image in compare:
        path = server.base / "output" / image["subfolder"] / image["filename"]
        assert path.is_file() and os.path.getsize(path) > 0
    # Stability Rank keeps the sample whose Align_X (all blocks) the report shows highest
    align = [sample["groups"]["all"] for sample in chart["samples"]]
    best = max(range(len(align)), key=align.__getitem__)
    ranking = outputs["16"]["text"][0].splitlines()
    assert ranking[1].split()[1:3] == ["sample", str(best)] and "kept" in ranking[1]
    assert len(outputs["17"]["images"]) == 1


@pytest.mark.parametrize("node_id", sorted(OUR_NODES))
def test_help_page_is_served_where_the_frontend_asks_first(server, node_id):
    """The frontend's node help asks for /extensions/<pack>/docs/<NodeId>/<locale>.md first
    and falls back to docs/<NodeId>.md (other locales): both are the same page."""
    import urllib.request

    docs = f"{server.url}/extensions/{PACK_DIR_NAME}/docs"
    with urllib.request.urlopen(f"{docs}/{node_id}/en.md", timeout=30) as response:
        first = response.read().decode()
    assert first.startswith(f"# {OUR_NODES[node_id]}")
    with urllib.request.urlopen(f"{docs}/{node_id}.md", timeout=30) as response:
        assert response.read().decode() == first


def _history_ids(server) -> set:
    return set(server.get("/history"))


def _queue_is_empty(server) -> bool:
    queue = server.get("/queue")
    return not queue["queue_running"] and not queue["queue_pending"]


BAD_SETTINGS = [
    # node in tiny_graph, inputs changed, what the node error says
    ("6", {"layers": "foo"}, "layers: cannot read 'foo'"),
    ("6", {"start_percent": 0.8, "end_percent": 0.2},
     "start_percent (0.8) is after end_percent (0.2): no step would be steered"),
    ("7", {"layers": "9-4"}, "layers: range '9-4' runs backwards"),
    ("7", {"start_percent": 0.9, "end_percent": 0.1}, "is after end_percent"),
    ("5", {"layers": "middel"}, "layers: cannot read 'middel'"),
    ("5", {"start_percent": 1.0, "end_percent": 0.5}, "no step would be recorded"),
]


@pytest.mark.parametrize("node_id, change, message", BAD_SETTINGS,
                         ids=[f"{n}-{'-'.join(c)}" for n, c, _ in BAD_SETTINGS])
def test_unreadable_settings_are_refused_when_queued(server, node_id, change, message):
    """Skew (6), Adaptive (7) and the Probe (5): the server answers 400 with node errors
    before anything runs (no model is loaded, nothing reaches the history)."""
    prompt = tiny_graph("sd3")
    prompt[node_id]["inputs"].update(change)
    before = _history_ids(server)
    status, body = server.post("/prompt", {"prompt": prompt, "client_id": "hc-e2e"})
    assert status == 400, body
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    errors = body["node_errors"][node_id]["errors"]
    assert body["node_errors"][node_id]["class_type"] == prompt[node_id]["class_type"]
    assert errors and all(e["type"] == "custom_validation_failed" for e in errors)
    assert any(message in e["details"] for e in errors), errors
    assert _queue_is_empty(server) and _history_ids(server) == before


def test_model_dependent_errors_fail_at_run_time_naming_the_node(server):
    """An index past the tiny SD3's last block passes the queue-time check (the model is not
    known then) and fails when the node runs, with a message that starts with its title."""
    prompt = tiny_graph("sd3")
    prompt["6"]["inputs"]["layers"] = "2-30"
    status, body = server.post("/prompt", {"prompt": prompt, "client_id": "hc-e2e"})
    assert status == 200, body
    prompt_id = body["prompt_id"]
    deadline = time.time() + 120
    entry = {}
    while time.time() < deadline:
        entry = server.get(f"/history/{prompt_id}").get(prompt_id, {})
        if entry.get("status", {}).get("status_str") == "error":
            break
        time.sleep(0.3)
    messages = dict(entry["status"]["messages"])
    error = messages["execution_error"]
    assert error["node_id"] == "6" and error["node_type"] == "HopfieldCirculation_SkewCirculation"
    assert error["exception_message"].startswith(
        "Skew Circulation: layers: '2-30' is past the last layer index (1) of this SD3 model")


def test_circulation_nodes_report_the_point_they_used(server):
    """With the default operating point, SD3 steers with the paper's SD3 point (α 0.95); the
    node's UI output and the report's text both say so."""
    prompt = tiny_graph("sd3")
    for node_id in ("6", "7"):
        prompt[node_id]["inputs"]["operating_point"] = "paper point for this model"
    history = server.run_prompt(prompt)
    skew = history["outputs"]["6"]["hopfield_operating_point"][0]
    adaptive = history["outputs"]["7"]["hopfield_operating_point"][0]
    assert (skew["alpha"], skew["beta"]) == (0.95, 3.0) and "SD3" in skew["text"]
    assert adaptive["alpha"] < 1
    text = history["outputs"]["12"]["text"][0]
    assert "Circulation in this run: Skew Circulation α 0.95, β 3" in text
    assert "Adaptive Circulation α 0.95, β 3" in text


def test_saved_report_is_readable_like_comfyuis_images(server):
    history = server.run_prompt(tiny_graph("sdxl"))
    text = history["outputs"]["12"]["text"][0]
    saved = Path(text.rsplit("Saved: ", 1)[1].strip())
    image = history["outputs"]["15"]["images"][0]
    png = server.base / "output" / image["subfolder"] / image["filename"]
    # the same permissions as the PNG ComfyUI saved (0644 under the usual umask 022)
    assert stat.S_IMODE(saved.stat().st_mode) == stat.S_IMODE(png.stat().st_mode)
