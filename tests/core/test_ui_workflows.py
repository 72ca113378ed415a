"""The bundled workflows as the template browser shows them: titles, thumbnails, model
download information, widget values, and that they are what the generator writes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))


def generator():
    spec = importlib.util.spec_from_file_location("make_workflows",
                                                  ROOT / "scripts" / "make_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_workflow_is_generated_and_up_to_date():
    gen = generator()
    assert sorted(p.stem for p in WORKFLOWS) == sorted(gen.WORKFLOWS)
    for path in WORKFLOWS:
        build, _ = gen.WORKFLOWS[path.stem]
        assert json.loads(path.read_text()) == json.loads(json.dumps(build().to_json())), (
            f"{path.name} differs from scripts/make_workflows.py: run it again")


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_title_is_the_file_name_and_reads_as_one(path):
    """The frontend shows a pack's template by its file name (title and description alike):
    words a person reads, short enough for the card's two lines, nothing a URL mangles."""
    name = path.stem
    assert "_" not in name and "-" not in name  # the card's description turns these to spaces
    assert name[0].isupper() and 15 <= len(name) <= 44
    assert all(c.isalnum() or c in " ,." for c in name), name
    assert name.split()[0] in ("SDXL", "SD3")


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_thumbnail_is_a_square_jpeg(path):
    Image = pytest.importorskip("PIL.Image", reason="Pillow (ComfyUI ships it) is not installed")
    import numpy as np

    thumb = path.with_suffix(".jpg")
    assert thumb.is_file(), f"{thumb.name} is missing"
    with Image.open(thumb) as image:
        assert image.format == "JPEG" and image.size == (512, 512)  # cards are square
        # generated text on a dark card, not a graph screenshot: few colours, mostly dark
        assert np.asarray(image.convert("L")).mean() < 100


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_loaders_say_where_to_download_their_model(path):
    workflow = json.loads(path.read_text())
    loaders = [n for n in workflow["nodes"] if n["type"] == "CheckpointLoaderSimple"]
    assert loaders
    for loader in loaders:
        (model,) = loader["properties"]["models"]
        assert model["name"] == loader["widgets_values"][0]
        assert model["directory"] == "checkpoints"
        # what the frontend accepts for a download: huggingface.co, a .safetensors file
        assert model["url"].startswith("https://huggingface.co/")
        assert model["url"].endswith("/" + model["name"])


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_circulation_nodes_carry_an_operating_point(path):
    workflow = json.loads(path.read_text())
    for node in workflow["nodes"]:
        if node["type"] == "HopfieldCirculation_SkewCirculation":
            assert len(node["widgets_values"]) == 8
        elif node["type"] == "HopfieldCirculation_AdaptiveCirculation":
            assert len(node["widgets_values"]) == 9
        else:
            continue
        assert node["widgets_values"][-1] in ("paper point for this model", "custom α, β")


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_nothing_overlaps_in_the_saved_layout(path):
    """Nodes (with their 30-unit title bar) and group title bars do not overlap as saved; the
    browser tier checks the rendered layout in both frontends."""
    workflow = json.loads(path.read_text())
    boxes = [(n["pos"][0], n["pos"][1] - 30, n["size"][0], n["size"][1] + 30, n["id"])
             for n in workflow["nodes"]]
    bars = [(g["bounding"][0], g["bounding"][1], g["bounding"][2], g["font_size"] * 1.4,
             g["title"]) for g in workflow["groups"]]

    def hit(a, b):
        return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and \
            b[1] < a[1] + a[3]

    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not hit(a, b), (a, b)
        for bar in bars:
            assert not hit(a, bar), (a, bar)
