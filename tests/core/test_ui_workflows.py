"""The bundled workflows as the template browser shows them: titles, thumbnails, model
download information, widget values, and that they are what the generator writes."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
# the first word of a title names the model family (a file name has no hyphen: "Qwen Image";
# nor a dot, which frontend 1.27 cuts a template's name at: "Flux 2"), with a version number
# or, for a one-letter name, the word after it ("Z Image")
FAMILIES = ("SDXL", "SD3", "Flux", "Flux 2", "Chroma", "Qwen", "Z Image", "HiDream")
SKEW = "HopfieldCirculation_SkewCirculation"
ADAPTIVE = "HopfieldCirculation_AdaptiveCirculation"
# loader -> (the widgets that name its files, the folder under ComfyUI/models they go to)
LOADERS = {
    "CheckpointLoaderSimple": (1, "checkpoints"),
    "UNETLoader": (1, "diffusion_models"),
    "CLIPLoader": (1, "text_encoders"),
    "DualCLIPLoader": (2, "text_encoders"),
    "QuadrupleCLIPLoader": (4, "text_encoders"),
    "VAELoader": (1, "vae"),
}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def source(workflow: dict, node: dict, input_name: str) -> dict:
    """The node whose output feeds ``input_name`` of ``node``."""
    (link_id,) = [i["link"] for i in node["inputs"] if i["name"] == input_name]
    link = next(li for li in workflow["links"] if li[0] == link_id)
    return next(n for n in workflow["nodes"] if n["id"] == link[1])


def family(path: Path) -> str:
    words = path.stem.split()
    return " ".join(words[:2]) if words[1].isdigit() or len(words[0]) == 1 else words[0]


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
    assert all(c.isalnum() or c in " ," for c in name), name
    assert family(path) in FAMILIES


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
    workflow = load(path)
    loaders = [n for n in workflow["nodes"] if n["type"] in LOADERS]
    assert loaders
    # one file format per family: a single checkpoint (SDXL, SD3) or split files (the DiTs)
    kinds = {n["type"] for n in loaders}
    if family(path) in ("SDXL", "SD3"):
        assert kinds == {"CheckpointLoaderSimple"}
    else:
        assert kinds in ({"UNETLoader", "CLIPLoader", "VAELoader"},
                         {"UNETLoader", "DualCLIPLoader", "VAELoader"},
                         {"UNETLoader", "QuadrupleCLIPLoader", "VAELoader"})
    for loader in loaders:
        files, directory = LOADERS[loader["type"]]
        models = loader["properties"]["models"]
        # every file the loader names, in widget order, and nothing else
        assert [m["name"] for m in models] == loader["widgets_values"][:files]
        for model in models:
            assert model["directory"] == directory
            # what the frontend accepts for a download: huggingface.co, a .safetensors file
            assert model["url"].startswith("https://huggingface.co/")
            assert model["url"].endswith("/" + model["name"])
            assert "/resolve/" in model["url"]  # the file itself, not its page (/blob/)


# Each DiT family as ComfyUI loads it: text encoder loader and its type (None: the loader takes
# none), the sampler's CFG, how the negative is made, what sits on the model before the
# branches, latent size, sampler
DIT = {
    "Flux": ("DualCLIPLoader", "flux", 1.0, "ConditioningZeroOut", "UNETLoader", 1024, "euler"),
    "Chroma": ("CLIPLoader", "chroma", 4.0, "CLIPTextEncode", "UNETLoader", 1024, "euler"),
    "Qwen": ("CLIPLoader", "qwen_image", 2.5, "CLIPTextEncode", "ModelSamplingAuraFlow", 1328,
             "euler"),
    # Z-Image Turbo as ComfyUI's template samples it: 8 steps of res_multistep, shift 3
    "Z Image": ("CLIPLoader", "lumina2", 1.0, "ConditioningZeroOut", "ModelSamplingAuraFlow",
                1024, "res_multistep"),
    # HiDream-I1 Full as ComfyUI's template samples it: 50 steps of uni_pc, CFG 5, shift 3
    "HiDream": ("QuadrupleCLIPLoader", None, 5.0, "CLIPTextEncode", "ModelSamplingSD3", 1024,
                "uni_pc"),
}
SHIFTS = {"Qwen": 3.1, "Z Image": 3.0, "HiDream": 3.0}
DIT_WORKFLOWS = [p for p in WORKFLOWS if family(p) in DIT]
# Flux.2 samples as ComfyUI's own Flux.2 template does (a guider and SamplerCustomAdvanced)
FLUX2 = ROOT / "workflows" / "Flux 2 Skew Circulation vs baseline.json"


def test_every_dit_family_has_a_workflow():
    assert sorted(family(p) for p in DIT_WORKFLOWS) == sorted(DIT)
    assert FLUX2.is_file()


def test_flux2_workflow_samples_as_comfyuis_flux2_template():
    """FLUX.2 [dev]'s text encoder under the flux2 type, guidance 4 on the positive, a
    1024 x 1024 Flux.2 latent and Flux2Scheduler's schedule for that size, and per column a
    BasicGuider over the shared noise (seed 42, fixed), sampler (euler), sigmas and latent."""
    workflow = load(FLUX2)
    nodes = workflow["nodes"]
    (clip,) = [n for n in nodes if n["type"] == "CLIPLoader"]
    assert clip["widgets_values"][-2:] == ["flux2", "default"]
    (unet,) = [n for n in nodes if n["type"] == "UNETLoader"]
    assert unet["widgets_values"][1] == "default"
    (latent,) = [n for n in nodes if n["type"] == "EmptyFlux2LatentImage"]
    (schedule,) = [n for n in nodes if n["type"] == "Flux2Scheduler"]
    assert latent["widgets_values"] == [1024, 1024, 1]
    assert schedule["widgets_values"][1:] == latent["widgets_values"][:2]
    runs = [n for n in nodes if n["type"] == "SamplerCustomAdvanced"]
    assert len(runs) == 2 and not [n for n in nodes if n["type"] == "KSampler"]
    guiders = [source(workflow, run, "guider") for run in runs]
    assert [g["type"] for g in guiders] == ["BasicGuider"] * 2
    positive = source(workflow, guiders[0], "conditioning")
    assert positive["type"] == "FluxGuidance" and positive["widgets_values"] == [4.0]
    assert source(workflow, source(workflow, positive, "conditioning"), "clip") is clip
    assert source(workflow, runs[0], "noise")["widgets_values"] == [42, "fixed"]
    assert source(workflow, runs[0], "sampler")["widgets_values"] == ["euler"]
    models = [source(workflow, g, "model") for g in guiders]
    assert models[0] is unet and models[1]["type"] == SKEW
    assert source(workflow, models[1], "model") is unet


@pytest.mark.parametrize("path", DIT_WORKFLOWS, ids=[p.stem for p in DIT_WORKFLOWS])
def test_dit_workflows_load_and_sample_their_family_as_comfyui_does(path):
    clip_loader, clip_type, cfg, negative, model_source, size, sampler = DIT[family(path)]
    workflow = load(path)
    nodes = workflow["nodes"]
    (clip,) = [n for n in nodes if n["type"] == clip_loader]
    if clip_type is None:  # file names only
        assert len(clip["widgets_values"]) == LOADERS[clip_loader][0]
    else:
        assert clip["widgets_values"][-2:] == [clip_type, "default"]  # type, device
    (unet,) = [n for n in nodes if n["type"] == "UNETLoader"]
    assert unet["widgets_values"][1] == "default"  # weight_dtype: as the file stores it
    (latent,) = [n for n in nodes if n["type"] == "EmptySD3LatentImage"]  # 16-channel latent
    assert latent["widgets_values"] == [size, size, 1]
    samplers = [n for n in nodes if n["type"] == "KSampler"]
    assert len(samplers) == 2
    for ks in samplers:
        assert ks["widgets_values"][3] == cfg
        assert ks["widgets_values"][4:6] == [sampler, "simple"]
        assert source(workflow, ks, "negative")["type"] == negative
        model = source(workflow, ks, "model")
        if model["type"] == SKEW:
            model = source(workflow, model, "model")
        assert model["type"] == model_source  # both columns sample the same model
    positive = source(workflow, samplers[0], "positive")
    if family(path) == "Flux":  # guidance-distilled: guidance 3.5 on the positive, CFG 1
        assert positive["type"] == "FluxGuidance" and positive["widgets_values"] == [3.5]
        positive = source(workflow, positive, "conditioning")
    else:
        assert positive["type"] == "CLIPTextEncode" and positive["title"] == "Positive prompt"
    if negative == "ConditioningZeroOut":  # the positive, zeroed
        zeroed = source(workflow, source(workflow, samplers[0], "negative"), "conditioning")
        assert zeroed is positive
    if family(path) in SHIFTS:
        (shift,) = [n for n in nodes if n["type"] == model_source]
        assert shift["widgets_values"] == [SHIFTS[family(path)]]


def readme_starting_points() -> dict[str, list[tuple[float, float]]]:
    """The 'Supported models' table's starting (α, β) for each family the paper did not test."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Supported models"):text.index("What is steered and probed")]
    rows = {"Flux": "| Flux:", "Chroma": "| Chroma,", "Qwen": "| Qwen-Image,",
            "Z Image": "| Lumina 2", "HiDream": "| HiDream-I1"}
    points = {}
    for name, start in rows.items():
        row = next(line for line in table.splitlines() if line.startswith(start))
        points[name] = row.rsplit("|", 2)[1]
    return points


@pytest.mark.parametrize("path", [*DIT_WORKFLOWS, FLUX2],
                         ids=[p.stem for p in [*DIT_WORKFLOWS, FLUX2]])
def test_dit_workflows_start_from_the_readme_range_and_say_so(path):
    """No paper point exists for these families: the node uses its α, β inputs ('custom'),
    set to the README's starting point, and the note says it is one and how to judge it."""
    workflow = load(path)
    (skew,) = [n for n in workflow["nodes"] if n["type"] == SKEW]
    alpha, beta = skew["widgets_values"][:2]
    assert skew["widgets_values"][-1] == "custom α, β"
    start = readme_starting_points()[family(path).removesuffix(" 2")]  # one row for both
    if family(path) == "Qwen":  # "start at SD3's points, α 0.95-0.97 β 2-4"
        assert "α 0.95-0.97 β 2-4" in start and 0.95 <= alpha <= 0.97 and 2 <= beta <= 4
    else:
        assert f"α {alpha:.2f}" in start and f"β {beta:g}" in start, (start, alpha, beta)
    (note,) = [n for n in workflow["nodes"] if n["type"] == "Note"]
    text = note["widgets_values"][0]
    assert "operating points for SDXL and SD3 only" in text
    assert "starting point" in text and "Stability Probe" in text
    if family(path).startswith("Flux") or family(path) == "Z Image":
        assert "one (cond) branch" in text
    if family(path).startswith("Flux"):
        assert all(f"'{name}'" in text for name in ("double", "single", "early", "middle",
                                                     "late"))
    if family(path) in ("Flux", "Z Image"):
        assert "CFG 1" in text


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_circulation_nodes_carry_an_operating_point(path):
    workflow = load(path)
    for node in workflow["nodes"]:
        if node["type"] == SKEW:
            assert len(node["widgets_values"]) == 8
        elif node["type"] == ADAPTIVE:
            assert len(node["widgets_values"]) == 9
        else:
            continue
        assert node["widgets_values"][-1] in ("paper point for this model", "custom α, β")


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_columns_differ_only_by_their_patch_and_say_which(path):
    """Every sampler has the same seed, settings, prompts and latent; a patched column's
    title names the α, β its node is set to (when the node uses its inputs)."""
    workflow = load(path)
    samplers = [n for n in workflow["nodes"] if n["type"] == "KSampler"]
    custom = [n for n in workflow["nodes"] if n["type"] == "SamplerCustomAdvanced"]
    assert bool(samplers) != bool(custom)
    for run in custom:  # a guider per column over shared noise, sampler, sigmas and latent
        for name in ("noise", "sampler", "sigmas", "latent_image"):
            assert source(workflow, run, name) is source(workflow, custom[0], name)
        guider = source(workflow, run, "guider")
        assert source(workflow, guider, "conditioning") is source(
            workflow, source(workflow, custom[0], "guider"), "conditioning")
        patch = source(workflow, guider, "model")
        if patch["type"] in (SKEW, ADAPTIVE):
            alpha, beta = patch["widgets_values"][:2]
            said = re.search(r"α ([\d.]+), β ([\d.]+)", run["title"])
            assert said and (float(said[1]), float(said[2])) == (alpha, beta), run["title"]
    first = samplers[0] if samplers else None
    for ks in samplers:
        assert ks["widgets_values"] == first["widgets_values"]
        assert ks["widgets_values"][:2] == [42, "fixed"]
        for name in ("positive", "negative", "latent_image"):
            assert source(workflow, ks, name) is source(workflow, first, name)
        patch = source(workflow, ks, "model")
        if patch["type"] not in (SKEW, ADAPTIVE):
            continue
        alpha, beta = patch["widgets_values"][:2]
        said = re.search(r"α ([\d.]+), β ([\d.]+)", ks["title"])
        assert said and (float(said[1]), float(said[2])) == (alpha, beta), ks["title"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_nothing_overlaps_in_the_saved_layout(path):
    """Nodes (with their 30-unit title bar) and group title bars do not overlap as saved; the
    browser tier checks the rendered layout in both frontends."""
    workflow = load(path)
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
