"""End-to-end over HTTP: the pack installed in a real ComfyUI server, as a user would have it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .server import PACK_DIR_NAME, REPO_ROOT, ComfyServer, ui_to_api
from .tiny_checkpoints import TINY_SD3, TINY_SDXL

pytestmark = pytest.mark.e2e

OUR_NODES = {
    "HopfieldCirculation_SkewCirculation": "Skew Circulation",
    "HopfieldCirculation_AdaptiveCirculation": "Adaptive Circulation",
    "HopfieldCirculation_StabilityProbe": "Stability Probe",
    "HopfieldCirculation_StabilityReport": "Stability Report",
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
    assert len(WORKFLOWS) == 5


@pytest.mark.parametrize("name", WORKFLOWS)
def test_bundled_workflow_validates_except_for_model_files(server, object_info, name):
    workflow = json.loads((REPO_ROOT / "workflows" / f"{name}.json").read_text())
    types = {n["type"] for n in workflow["nodes"]} - {"Note"}
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
        assert body["node_errors"][node_id]["class_type"] == "CheckpointLoaderSimple", err
        assert err["type"] == "value_not_in_list" and err["extra_info"]["input_name"] == \
            "ckpt_name", err


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


@pytest.mark.parametrize("node_id", sorted(OUR_NODES))
def test_help_page_is_served(server, node_id):
    """The frontend's node help fetches /extensions/<pack>/docs/<NodeId>.md."""
    import urllib.request

    url = f"{server.url}/extensions/{PACK_DIR_NAME}/docs/{node_id}.md"
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    assert text.startswith(f"# {OUR_NODES[node_id]}")
