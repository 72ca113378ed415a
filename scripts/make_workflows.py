"""Writes the bundled example workflows (UI format) and their thumbnails into workflows/.

    python scripts/make_workflows.py

Kept as code so the graphs share one layout and stay consistent (same seed on every branch).
The SDXL and SD3 graphs use the paper's sampling (CFG 5, 30 steps, 1024 x 1024); the Flux,
Chroma and Qwen-Image graphs use each model's usual sampling and a starting (α, β) from the
README's "Supported models" ranges (the paper has no point for them). The JSON files and the
.jpg thumbnails are what ships.

What the template browser shows (ComfyUI frontend 1.27 and 1.58 alike): a custom node pack's
template is known only by its file name, which is the card's title and also its description
(nothing else is read: no index.json, no metadata inside the workflow). So the file names are
the titles, and the thumbnail (<name>.jpg, shown in a square) carries the purpose: what is
compared, with which settings, in text large enough to read at card size.

Layout: every node is given a size at least as tall as its content in Nodes 2.0 (where node
height follows the content), and nodes are stacked by those sizes, so the graph has no
overlaps in the classic canvas or in Nodes 2.0; group title bars sit clear of the pack badge
that the classic canvas draws above a node's title.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

OUT = Path(__file__).resolve().parents[1] / "workflows"
SEED = 42
SDXL_CKPT = "sd_xl_base_1.0.safetensors"
SD3_CKPT = "sd3_medium_incl_clips_t5xxlfp16.safetensors"
FLUX_UNET = "flux1-dev.safetensors"
CHROMA_UNET = "Chroma1-HD.safetensors"
QWEN_UNET = "qwen_image_fp8_e4m3fn.safetensors"
CLIP_L = "clip_l.safetensors"
T5XXL = "t5xxl_fp16.safetensors"
QWEN_TE = "qwen_2.5_vl_7b_fp8_scaled.safetensors"
FLUX_VAE = "ae.safetensors"
QWEN_VAE = "qwen_image_vae.safetensors"
FLUX2_UNET = "flux2_dev_fp8mixed.safetensors"
FLUX2_TE = "mistral_3_small_flux2_bf16.safetensors"
FLUX2_VAE = "flux2-vae.safetensors"
Z_IMAGE_UNET = "z_image_turbo_bf16.safetensors"
Z_IMAGE_TE = "qwen_3_4b.safetensors"
HIDREAM_UNET = "hidream_i1_full_fp8.safetensors"
HIDREAM_TES = ("clip_l_hidream.safetensors", "clip_g_hidream.safetensors",
               "t5xxl_fp8_e4m3fn_scaled.safetensors",
               "llama_3.1_8b_instruct_fp8_scaled.safetensors")
# What the frontend offers to download when a loader's model is missing (properties.models):
# file name -> (url, folder under ComfyUI/models). The Flux and Qwen-Image files are the ones
# ComfyUI's own templates download (Comfy-Org/workflow_templates); Chroma1-HD is its authors'
# bf16 file, which ComfyUI_examples points to (lodestones).
HF = "https://huggingface.co/"
FLUX_TE = HF + "comfyanonymous/flux_text_encoders/resolve/main/"
QWEN_REPO = HF + "Comfy-Org/Qwen-Image_ComfyUI/resolve/main/split_files/"
FLUX2_REPO = HF + "Comfy-Org/flux2-dev/resolve/main/split_files/"
Z_IMAGE_REPO = HF + "Comfy-Org/z_image_turbo/resolve/main/split_files/"
HIDREAM_REPO = HF + "Comfy-Org/HiDream-I1_ComfyUI/resolve/main/split_files/"
MODELS = {
    SDXL_CKPT: (HF + "stabilityai/stable-diffusion-xl-base-1.0/resolve/main/"
                "sd_xl_base_1.0.safetensors", "checkpoints"),
    SD3_CKPT: (HF + "stabilityai/stable-diffusion-3-medium/resolve/main/"
               "sd3_medium_incl_clips_t5xxlfp16.safetensors", "checkpoints"),
    # Comfy-Org's copy of FLUX.1 [dev] (its non-commercial licence applies)
    FLUX_UNET: (HF + "Comfy-Org/flux1-dev/resolve/main/flux1-dev.safetensors",
                "diffusion_models"),
    CHROMA_UNET: (HF + "lodestones/Chroma1-HD/resolve/main/Chroma1-HD.safetensors",
                  "diffusion_models"),
    QWEN_UNET: (QWEN_REPO + "diffusion_models/qwen_image_fp8_e4m3fn.safetensors",
                "diffusion_models"),
    CLIP_L: (FLUX_TE + "clip_l.safetensors", "text_encoders"),
    T5XXL: (FLUX_TE + "t5xxl_fp16.safetensors", "text_encoders"),
    QWEN_TE: (QWEN_REPO + "text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors",
              "text_encoders"),
    FLUX_VAE: (HF + "Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae/"
               "ae.safetensors", "vae"),
    QWEN_VAE: (QWEN_REPO + "vae/qwen_image_vae.safetensors", "vae"),
    # FLUX.2 [dev] as ComfyUI's own Flux.2 templates load it (its non-commercial licence applies)
    FLUX2_UNET: (FLUX2_REPO + "diffusion_models/flux2_dev_fp8mixed.safetensors",
                 "diffusion_models"),
    FLUX2_TE: (FLUX2_REPO + "text_encoders/mistral_3_small_flux2_bf16.safetensors",
               "text_encoders"),
    FLUX2_VAE: (FLUX2_REPO + "vae/flux2-vae.safetensors", "vae"),
    # Z-Image Turbo as ComfyUI's own template loads it (its VAE is ae.safetensors, above)
    Z_IMAGE_UNET: (Z_IMAGE_REPO + "diffusion_models/z_image_turbo_bf16.safetensors",
                   "diffusion_models"),
    Z_IMAGE_TE: (Z_IMAGE_REPO + "text_encoders/qwen_3_4b.safetensors", "text_encoders"),
    # HiDream-I1 Full (fp8) and its four text encoders as ComfyUI's own template loads them
    HIDREAM_UNET: (HIDREAM_REPO + "diffusion_models/hidream_i1_full_fp8.safetensors",
                   "diffusion_models"),
    **{name: (HIDREAM_REPO + "text_encoders/" + name, "text_encoders") for name in HIDREAM_TES},
}
# Node types a workflow needs that older ComfyUI lacks -> what brought them (the tests skip such
# a workflow, with this reason, on a host without them)
NEWER_HOST_NODES = {
    "EmptyFlux2LatentImage": "Flux.2 (ComfyUI 0.3.72 and later)",
    "Flux2Scheduler": "Flux.2 (ComfyUI 0.3.72 and later)",
}
SKEW = "HopfieldCirculation_SkewCirculation"
ADAPTIVE = "HopfieldCirculation_AdaptiveCirculation"
PROBE = "HopfieldCirculation_StabilityProbe"
REPORT = "HopfieldCirculation_StabilityReport"
RANK = "HopfieldCirculation_StabilityRank"
PAPER_POINT = "paper point for this model"
CUSTOM = "custom α, β"

OUTPUTS = {
    "CheckpointLoaderSimple": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
    "UNETLoader": [("MODEL", "MODEL")],
    "CLIPLoader": [("CLIP", "CLIP")],
    "DualCLIPLoader": [("CLIP", "CLIP")],
    "QuadrupleCLIPLoader": [("CLIP", "CLIP")],
    "VAELoader": [("VAE", "VAE")],
    "ModelSamplingAuraFlow": [("MODEL", "MODEL")],
    "ModelSamplingSD3": [("MODEL", "MODEL")],
    "CLIPTextEncode": [("CONDITIONING", "CONDITIONING")],
    "FluxGuidance": [("CONDITIONING", "CONDITIONING")],
    "ConditioningZeroOut": [("CONDITIONING", "CONDITIONING")],
    "EmptyLatentImage": [("LATENT", "LATENT")],
    "EmptySD3LatentImage": [("LATENT", "LATENT")],
    "KSampler": [("LATENT", "LATENT")],
    "EmptyFlux2LatentImage": [("LATENT", "LATENT")],
    "RandomNoise": [("NOISE", "NOISE")],
    "KSamplerSelect": [("SAMPLER", "SAMPLER")],
    "Flux2Scheduler": [("SIGMAS", "SIGMAS")],
    "BasicGuider": [("GUIDER", "GUIDER")],
    "SamplerCustomAdvanced": [("output", "LATENT"), ("denoised_output", "LATENT")],
    "VAEDecode": [("IMAGE", "IMAGE")],
    "ImageStitch": [("IMAGE", "IMAGE")],
    SKEW: [("MODEL", "MODEL")],
    ADAPTIVE: [("MODEL", "MODEL")],
    PROBE: [("MODEL", "MODEL"), ("probe", "HOPFIELD_PROBE")],
    REPORT: [("heatmaps", "IMAGE"), ("overlay", "IMAGE"), ("align_down", "FLOAT"),
             ("align_mid", "FLOAT"), ("align_up", "FLOAT"), ("align_all", "FLOAT"),
             ("report", "STRING")],
    RANK: [("latent", "LATENT"), ("image", "IMAGE"), ("scores", "STRING")],
}
INPUTS = {
    "ModelSamplingAuraFlow": [("model", "MODEL")],
    "ModelSamplingSD3": [("model", "MODEL")],
    "CLIPTextEncode": [("clip", "CLIP")],
    "FluxGuidance": [("conditioning", "CONDITIONING")],
    "ConditioningZeroOut": [("conditioning", "CONDITIONING")],
    "KSampler": [("model", "MODEL"), ("positive", "CONDITIONING"),
                 ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
    "BasicGuider": [("model", "MODEL"), ("conditioning", "CONDITIONING")],
    "SamplerCustomAdvanced": [("noise", "NOISE"), ("guider", "GUIDER"), ("sampler", "SAMPLER"),
                              ("sigmas", "SIGMAS"), ("latent_image", "LATENT")],
    "VAEDecode": [("samples", "LATENT"), ("vae", "VAE")],
    "ImageStitch": [("image1", "IMAGE"), ("image2", "IMAGE")],
    "SaveImage": [("images", "IMAGE")],
    "PreviewImage": [("images", "IMAGE")],
    "PreviewAny": [("source", "*")],
    SKEW: [("model", "MODEL")],
    ADAPTIVE: [("model", "MODEL")],
    PROBE: [("model", "MODEL")],
    REPORT: [("probe", "HOPFIELD_PROBE"), ("latent", "LATENT"), ("image", "IMAGE")],
    RANK: [("probe", "HOPFIELD_PROBE"), ("latent", "LATENT"), ("image", "IMAGE")],
}

# Node body heights (canvas units, without the 30-unit title) at least as tall as the content
# in Nodes 2.0 (frontend 1.58), measured there; the classic canvas needs less.
TITLE = 30
GAP = 40  # between stacked nodes
HEIGHT = {"CheckpointLoaderSimple": 140, "EmptyLatentImage": 130, "EmptySD3LatentImage": 130,
          "KSampler": 270, "VAEDecode": 70, "ImageStitch": 180, SKEW: 330, ADAPTIVE: 360,
          PROBE: 270, "PreviewAny": 150, RANK: 330,
          # measured with the model files absent (a loader then shows an "Issues" footer)
          "UNETLoader": 130, "CLIPLoader": 140, "DualCLIPLoader": 170, "VAELoader": 100,
          "QuadrupleCLIPLoader": 170, "ModelSamplingSD3": 80,
          "ModelSamplingAuraFlow": 80, "FluxGuidance": 80, "ConditioningZeroOut": 50,
          "EmptyFlux2LatentImage": 130, "RandomNoise": 90, "KSamplerSelect": 70,
          "Flux2Scheduler": 130, "BasicGuider": 60, "SamplerCustomAdvanced": 130}
WIDTH = 340
COLUMN = 420  # pitch of the branch columns
GROUP_HEAD = 100  # from a group's top to its first node's pos: title bar, badge, margin
GROUP_FONT = 22


class Graph:
    def __init__(self):
        self.nodes, self.links, self.groups = [], [], []

    def node(self, kind, pos, widgets=(), title=None, size=None, properties=None):
        size = size or (WIDTH, HEIGHT.get(kind, 130))
        node = {
            "id": len(self.nodes) + 1, "type": kind, "pos": list(pos), "size": list(size),
            "flags": {}, "order": len(self.nodes), "mode": 0,
            "inputs": [{"name": n, "type": t, "link": None} for n, t in INPUTS.get(kind, [])],
            "outputs": [{"name": n, "type": t, "links": [], "slot_index": i}
                        for i, (n, t) in enumerate(OUTPUTS.get(kind, []))],
            "properties": {"Node name for S&R": kind, **(properties or {})},
            "widgets_values": list(widgets),
        }
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node

    def link(self, src, slot, dst, input_name):
        link_id = len(self.links) + 1
        target = next(i for i, inp in enumerate(dst["inputs"]) if inp["name"] == input_name)
        kind = src["outputs"][slot]["type"]
        self.links.append([link_id, src["id"], slot, dst["id"], target, kind])
        src["outputs"][slot]["links"].append(link_id)
        dst["inputs"][target]["link"] = link_id

    def group(self, title, x, y, w, h, color="#3f789e"):
        self.groups.append({"title": title, "bounding": [x, y, w, h], "color": color,
                            "font_size": GROUP_FONT, "flags": {}})

    def note(self, text, pos, size=(WIDTH, 260)):
        return self.node("Note", pos, [text], size=size)

    def to_json(self):
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links),
                "nodes": self.nodes, "links": self.links, "groups": self.groups,
                "config": {}, "extra": {"ds": {"scale": 0.6, "offset": [40, 40]}},
                "version": 0.4}


def below(node, gap=GAP) -> float:
    """The y of a node stacked under ``node``."""
    return node["pos"][1] + node["size"][1] + TITLE + gap


def models_of(*names) -> dict:
    """A loader's properties: where the frontend downloads each of its files when missing."""
    return {"models": [{"name": n, "url": MODELS[n][0], "directory": MODELS[n][1]}
                       for n in names]}


class Loaded(NamedTuple):
    """A family's loader section, stacked at the top of the left column: (node, output slot)
    of what the graph takes from it, and the y under its last node."""

    model: tuple
    clip: tuple
    vae: tuple
    bottom: float


def checkpoint(ckpt):
    """One file with model, text encoders and VAE (SDXL, SD3)."""
    def load(g):
        loader = g.node("CheckpointLoaderSimple", (0, 0), [ckpt], properties=models_of(ckpt))
        return Loaded((loader, 0), (loader, 1), (loader, 2), below(loader))
    return load


CLIP_LOADERS = {1: "CLIPLoader", 2: "DualCLIPLoader", 4: "QuadrupleCLIPLoader"}


def split_files(unet, text_encoders, clip_type, vae, shift=None,
                shift_node="ModelSamplingAuraFlow"):
    """The diffusion model, its text encoder(s) and VAE as separate files (Flux, Chroma,
    Qwen-Image, HiDream), with ``shift_node`` on the model when ``shift`` is given: the model
    every branch samples, patched or not. ``clip_type`` None: a loader that takes no type
    (HiDream's four encoders)."""
    def load(g):
        unet_node = g.node("UNETLoader", (0, 0), [unet, "default"], properties=models_of(unet))
        model, y = (unet_node, 0), below(unet_node)
        if shift is not None:
            sampling = g.node(shift_node, (0, y), [shift])
            g.link(unet_node, 0, sampling, "model")
            model, y = (sampling, 0), below(sampling)
        kind = CLIP_LOADERS[len(text_encoders)]
        widgets = [*text_encoders] if clip_type is None else [*text_encoders, clip_type, "default"]
        clip = g.node(kind, (0, y), widgets, properties=models_of(*text_encoders))
        vae_node = g.node("VAELoader", (0, below(clip)), [vae], properties=models_of(vae))
        return Loaded(model, (clip, 0), (vae_node, 0), below(vae_node))
    return load


# KSampler settings (steps, cfg, sampler, scheduler): the paper's on SDXL and SD3
SDXL_SAMPLING = (30, 5.0, "euler", "normal")
SD3_SAMPLING = (30, 5.0, "euler", "sgm_uniform")


class Shared(NamedTuple):
    """What every branch takes from the left column."""

    model: tuple  # (node, output slot) the branches sample, patched or not
    vae: tuple
    pos: dict
    neg: dict
    latent: dict
    sampling: tuple  # steps, cfg, sampler, scheduler


def common(g, load, prompt, negative, sampling, latent="EmptyLatentImage", size=1024,
           guidance=None):
    """Loaders, prompts and latent shared by every branch, in the left column. ``negative``
    None: a zeroed positive (a model sampled at CFG 1 ignores the negative); ``guidance``:
    FluxGuidance on the positive."""
    loaded = load(g)
    text = g.node("CLIPTextEncode", (0, loaded.bottom), [prompt], title="Positive prompt",
                  size=(WIDTH, 170))
    g.link(*loaded.clip, text, "clip")
    pos = text
    if guidance is not None:
        pos = g.node("FluxGuidance", (0, below(text)), [guidance])
        g.link(text, 0, pos, "conditioning")
    if negative is None:
        neg = g.node("ConditioningZeroOut", (0, below(pos)),
                     title="Negative: zeroed, unused at CFG 1")
        g.link(text, 0, neg, "conditioning")
    else:
        neg = g.node("CLIPTextEncode", (0, below(pos)), [negative], title="Negative prompt",
                     size=(WIDTH, 130))
        g.link(*loaded.clip, neg, "clip")
    lat = g.node(latent, (0, below(neg)), [size, size, 1])
    return Shared(loaded.model, loaded.vae, pos, neg, lat, sampling)


def patch_height(patch) -> int:
    return HEIGHT[patch[0]] if patch else 0


def branch(g, column, title, shared, model=None, patch=None, top=0, patch_room=0):
    """One labelled column: optional patch node, KSampler (same seed), VAE decode. ``model``:
    (node, slot) to sample instead of the shared model. ``patch_room``: the height kept for
    patch nodes, so every column's sampler lines up."""
    x = 440 + column * COLUMN
    y = top
    source, slot = model or shared.model
    if patch is not None:
        kind, widgets = patch
        node = g.node(kind, (x, y), widgets)
        g.link(source, slot, node, "model")
        source, slot = node, 0
    ks_y = y + (patch_room + TITLE + GAP if patch_room else 0)
    ks = g.node("KSampler", (x, ks_y), [SEED, "fixed", *shared.sampling, 1.0],
                title=f"KSampler: {title}")
    g.link(source, slot, ks, "model")
    g.link(shared.pos, 0, ks, "positive")
    g.link(shared.neg, 0, ks, "negative")
    g.link(shared.latent, 0, ks, "latent_image")
    dec = g.node("VAEDecode", (x, below(ks)))
    g.link(ks, 0, dec, "samples")
    g.link(*shared.vae, dec, "vae")
    bottom = below(dec, gap=20)
    g.group(title, x - 20, y - GROUP_HEAD, WIDTH + 40, bottom - (y - GROUP_HEAD))
    return dec, bottom


def stitch_all(g, decoded, x, title="Side by side (left to right as the columns)"):
    """Chain ImageStitch nodes so every branch lands in one image, then save it."""
    current = decoded[0]
    y = 0
    for nxt in decoded[1:]:
        st = g.node("ImageStitch", (x, y), ["right", True, 16, "white"], size=(300, 180))
        y = below(st, gap=20)
        g.link(current, 0, st, "image1")
        g.link(nxt, 0, st, "image2")
        current = st
    save = g.node("SaveImage", (x + 340, 0), ["hopfield/compare"], title=title, size=(520, 560))
    g.link(current, 0, save, "images")
    return save


def skew_widgets(alpha, beta, point=CUSTOM):
    return [alpha, beta, 0.0, 1.0, "all", "both", "value", point]


SDXL_PROMPT = "a photo of a horse standing in a meadow, detailed, natural light"
NEGATIVE = "blurry, low quality"


def skew_vs_baseline(g, shared, alpha, beta, point=CUSTOM):
    """Baseline and Skew Circulation columns on one seed, stitched side by side."""
    room = HEIGHT[SKEW]
    base, _ = branch(g, 0, "Baseline", shared, patch_room=room)
    skew, _ = branch(g, 1, f"Skew Circulation α {alpha:.2f}, β {beta:g}", shared,
                     patch=(SKEW, skew_widgets(alpha, beta, point)), patch_room=room)
    stitch_all(g, [base, skew], 440 + 2 * COLUMN)


def sdxl_skew():
    g = Graph()
    shared = common(g, checkpoint(SDXL_CKPT), SDXL_PROMPT, NEGATIVE, SDXL_SAMPLING)
    skew_vs_baseline(g, shared, 1.05, 3.0, PAPER_POINT)
    g.note("Same seed, same sampler. Right: Skew Circulation at its default, the paper's point "
           "for the connected model (SDXL: α = 1.05, β = 3; section 6). Look for spurious "
           "mixtures in the baseline (extra limbs, blended objects) that the circulation "
           "breaks up, and for added texture or composition changes on samples that were "
           "already coherent.", (0, below(shared.latent)))
    return g


def sdxl_adaptive():
    g = Graph()
    shared = common(g, checkpoint(SDXL_CKPT), "a fancy clock with a golden frame on a red "
                    "carpet, hotel lobby", NEGATIVE, SDXL_SAMPLING)
    room = HEIGHT[ADAPTIVE]
    base, _ = branch(g, 0, "Baseline", shared, patch_room=room)
    static, _ = branch(g, 1, "Static α 1.2, β 5", shared,
                       patch=(SKEW, skew_widgets(1.2, 5.0)), patch_room=room)
    adaptive, _ = branch(g, 2, "Adaptive α 1.2, β 5", shared,
                         patch=(ADAPTIVE, [*skew_widgets(1.2, 5.0)[:-1], "per sample",
                                           CUSTOM]), patch_room=room)
    stitch_all(g, [base, static, adaptive], 440 + 3 * COLUMN)
    g.note("The paper's table 6: the same 'excessive' setting (α = 1.2, β = 5) applied "
           "statically distorts the image, while Adaptive Circulation damps it by the "
           "attention's symmetry η_M (α_eff = 1 + (α − 1)·η̄, β_eff = β·(1 − η̄)) and keeps "
           "the object coherent. Both nodes are set to 'custom α, β' so they use the same "
           "setting.", (0, below(shared.latent)))
    return g


def sd3_skew():
    g = Graph()
    shared = common(g, checkpoint(SD3_CKPT), SDXL_PROMPT, NEGATIVE, SD3_SAMPLING,
                    latent="EmptySD3LatentImage")
    skew_vs_baseline(g, shared, 0.95, 3.0, PAPER_POINT)
    g.note("SD3 (MMDiT joint attention over [text; image]): the paper's appendix B.1 steers "
           "with α slightly below 1 (0.90-0.97). Skew Circulation's default, the paper's point "
           "for the connected model, uses (0.95, 3) on SD3. (0.95, 3) and (0.97, 4) raised "
           "ImageReward on COCO while keeping the aesthetic score.", (0, below(shared.latent)))
    return g


def sdxl_probe():
    g = Graph()
    shared = common(g, checkpoint(SDXL_CKPT), SDXL_PROMPT, NEGATIVE, SDXL_SAMPLING)
    probe = g.node(PROBE, (440, 0), ["value", 64, 0.0, 1.0, "cond", "all"])
    g.link(*shared.model, probe, "model")
    dec, _ = branch(g, 0, "Probed generation", shared, model=(probe, 0),
                    top=below(probe) - GAP + 20)
    g.groups.pop()  # one column only: no branch box
    report = g.node(REPORT, (440 + COLUMN, 0), [False, "hopfield/stability"],
                    size=(560, 900))
    g.link(probe, 1, report, "probe")
    ksampler = next(n for n in g.nodes if n["type"] == "KSampler")
    g.link(ksampler, 0, report, "latent")
    g.link(dec, 0, report, "image")
    x = report["pos"][0] + report["size"][0] + 60
    y = 0
    for i, name in enumerate(("align_down", "align_mid", "align_up", "align_all")):
        shown = g.node("PreviewAny", (x, y), title=name, size=(240, HEIGHT["PreviewAny"]))
        y = below(shown, gap=20)
        g.link(report, 2 + i, shown, "source")
    heat = g.node("PreviewImage", (x + 300, 0), title="λ_X heatmaps, labelled",
                  size=(420, 460))
    g.link(report, 0, heat, "images")
    over = g.node("PreviewImage", (x + 760, 0), title="Heatmaps over the image",
                  size=(420, 460))
    g.link(report, 1, over, "images")
    shared.latent["widgets_values"][2] = 4  # a batch of four seeds to rank
    rank = g.node(RANK, (x + 300, below(heat, gap=80)), ["all", "most stable first", 2],
                  size=(420, HEIGHT[RANK]))
    g.link(probe, 1, rank, "probe")
    g.link(ksampler, 0, rank, "latent")
    g.link(dec, 0, rank, "image")
    kept = g.node("PreviewImage", (x + 760, below(over, gap=80)),
                  title="The 2 most stable of 4", size=(420, 460))
    g.link(rank, 1, kept, "images")
    g.note("Stability Probe records the paper's Hopfield measures during sampling without "
           "changing the image. Each heatmap tile is labelled (sample, branch, block) with a "
           "colour bar: red marks tokens whose retrieval conflicts with its local field "
           "(λ_X < 0), blue where it is reinforced. Higher Align_X is more stable: the paper's "
           "stable samples averaged 0.690, unstable ones 0.650 (table 2). The chart on the "
           "report node plots Align_X per layer, Down/Mid/Up shaded, block means dashed. Put a "
           "Skew Circulation node before the probe to see Align_X drop as circulation grows "
           "(table 3).", (0, below(shared.latent)), size=(WIDTH, 320))
    return g


TABLE3 = {1.05: (5.0, 6.0, 7.5), 1.10: (4.0, 5.0, 6.0), 1.15: (3.0, 4.0)}


def sdxl_grid():
    """Rows by α, columns by β, as table 3 lays them out; the baseline heads the first row."""
    g = Graph()
    shared = common(g, checkpoint(SDXL_CKPT), SDXL_PROMPT, NEGATIVE, SDXL_SAMPLING)
    room = HEIGHT[SKEW]
    decoded = []
    dec, bottom = branch(g, 0, "Baseline", shared, patch_room=room)
    decoded.append(dec)
    top = 0
    for a, betas in TABLE3.items():
        row_bottom = bottom
        for col, b in enumerate(betas, start=1):
            dec, bottom = branch(g, col, f"α {a:.2f}, β {b:g}", shared, top=top,
                                 patch=(SKEW, skew_widgets(a, b)), patch_room=room)
            decoded.append(dec)
            row_bottom = max(row_bottom, bottom)
        top = row_bottom + GROUP_HEAD + 40
    stitch_all(g, decoded, 440 + COLUMN * (1 + max(len(b) for b in TABLE3.values())),
               title="Side by side: baseline, then table 3 left to right")
    g.note("The paper's table 3 operating grid (SDXL, COCO-1K, CFG 5, 30 steps): rows α = "
           "1.05 / 1.10 / 1.15, columns their β values. The aesthetic score rises with α and β "
           "(best 1.10, 6); ImageReward peaks at (1.05, 5) and falls beyond; the stability "
           "measures (Align_X, -E_X) drop as circulation grows. On the baseline's worst 20 % by "
           "each metric, every point improved that metric (table 3b). Same seed in every "
           "column; the stitched image runs baseline, (1.05, 5), (1.05, 6), (1.05, 7.5), "
           "(1.10, 4) ... (1.15, 4).", (0, below(shared.latent)), size=(WIDTH, 340))
    return g


# The families the paper did not test: sampling close to ComfyUI's own template for each, and
# the starting (α, β) of the README's "Supported models" table, set as "custom α, β" (the
# paper point falls back to the α, β inputs on these families anyway).
FLUX_SAMPLING = (20, 1.0, "euler", "simple")
CHROMA_SAMPLING = (26, 4.0, "euler", "simple")
QWEN_SAMPLING = (20, 2.5, "euler", "simple")
Z_IMAGE_SAMPLING = (8, 1.0, "res_multistep", "simple")  # ComfyUI's Z-Image Turbo template
HIDREAM_SAMPLING = (50, 5.0, "uni_pc", "simple")  # ComfyUI's HiDream-I1 Full template
DIT_NEGATIVE = "blurry, low quality, bad anatomy, extra limbs"
UNTESTED = ("The paper gives operating points for SDXL and SD3 only. α {a}, β {b} is a starting "
            "point from the README's range for {family} ({why}), not a measured setting: "
            "compare it with {mirror} and judge the regime with the Stability Probe next to "
            "the baseline (circulation lowers Align_X; back off when samples fragment). ")
NOTE_SIZE = (WIDTH, 400)


def flux_skew():
    g = Graph()
    shared = common(g, split_files(FLUX_UNET, (CLIP_L, T5XXL), "flux", FLUX_VAE), SDXL_PROMPT,
                    None, FLUX_SAMPLING, latent="EmptySD3LatentImage", guidance=3.5)
    skew_vs_baseline(g, shared, 0.90, 3.5)
    g.note("FLUX.1 [dev] is guidance-distilled: FluxGuidance 3.5 sets its guidance and it "
           "samples at CFG 1, so there is one (cond) branch only: the zeroed negative is "
           "never used, and Skew Circulation's branch 'both' and 'cond' are the same. "
           + UNTESTED.format(a="0.90", b="3.5", family="Flux",
                             why="about SDXL's per-call change at its paper point",
                             mirror="the mirrored α 1.10") +
           "layers: 'double' (double blocks 0-18), 'single' (single blocks 19-56), "
           "'early' / 'middle' / 'late' thirds of all 57, or indices. schnell, Kontext and "
           "Fill load the same way.", (0, below(shared.latent)), size=NOTE_SIZE)
    return g


def chroma_skew():
    g = Graph()
    shared = common(g, split_files(CHROMA_UNET, (T5XXL,), "chroma", FLUX_VAE), SDXL_PROMPT,
                    DIT_NEGATIVE, CHROMA_SAMPLING, latent="EmptySD3LatentImage")
    skew_vs_baseline(g, shared, 0.85, 4.0)
    g.note("Chroma1-HD (derived from Flux, T5 text encoder only) samples with real CFG and a "
           "negative prompt, like SD3: branch 'both' steers the cond and uncond calls. "
           + UNTESTED.format(a="0.85", b="4", family="Chroma",
                             why="it moves about a quarter as much as SDXL at one setting",
                             mirror="the mirrored α 1.15") +
           "layers as on Flux: 'double' (blocks 0-18), 'single' (19-56), 'early' / "
           "'middle' / 'late', or indices.", (0, below(shared.latent)), size=NOTE_SIZE)
    return g


def qwen_skew():
    g = Graph()
    shared = common(g, split_files(QWEN_UNET, (QWEN_TE,), "qwen_image", QWEN_VAE, shift=3.1),
                    SDXL_PROMPT, DIT_NEGATIVE, QWEN_SAMPLING, latent="EmptySD3LatentImage",
                    size=1328)
    skew_vs_baseline(g, shared, 0.95, 3.0)
    g.note("Qwen-Image (60 MMDiT blocks, joint attention over [text; image]) samples with "
           "real CFG 2.5 on the flow shift 3.1 that ModelSamplingAuraFlow sets on the model "
           "both columns sample. "
           + UNTESTED.format(a="0.95", b="3", family="Qwen-Image",
                             why="it moves about as much as SD3, so SD3's points, α 0.95-0.97 "
                                 "β 2-4, apply as they are",
                             mirror="(0.97, 4) and the mirrored α 1.05") +
           "layers: 'early' / 'middle' / 'late' thirds of blocks 0-59, or indices.",
           (0, below(shared.latent)), size=NOTE_SIZE)
    return g


def z_image_skew():
    """Z-Image Turbo as ComfyUI's own template samples it: shift 3, 8 steps of res_multistep
    at CFG 1 (one branch), the positive zeroed as the negative."""
    g = Graph()
    shared = common(g, split_files(Z_IMAGE_UNET, (Z_IMAGE_TE,), "lumina2", FLUX_VAE, shift=3.0),
                    SDXL_PROMPT, None, Z_IMAGE_SAMPLING, latent="EmptySD3LatentImage")
    skew_vs_baseline(g, shared, 0.94, 3.5)
    g.note("Z-Image Turbo (ComfyUI 0.5.0 and later: older hosts name none of its blocks, and "
           "the node says so) is distilled to sample in 8 steps at CFG 1 on the flow shift 3 "
           "that ModelSamplingAuraFlow sets on the model both columns sample: one (cond) "
           "branch, so the zeroed negative is never used and Skew Circulation's branch 'both' "
           "and 'cond' are the same. "
           + UNTESTED.format(a="0.94", b="3.5", family="Z-Image",
                             why="about SDXL's per-call change at its paper point",
                             mirror="the mirrored α 1.06") +
           "layers: 'early' / 'middle' / 'late' thirds of blocks 0-29, or indices. Z-Image "
           "Base and Lumina 2 load the same way (Lumina 2 with its own text encoder, real CFG "
           "and SD3's points).", (0, below(shared.latent)), size=NOTE_SIZE)
    return g


def hidream_skew():
    """HiDream-I1 Full as ComfyUI's own template samples it: shift 3 (ModelSamplingSD3), 50
    steps of uni_pc at CFG 5 with a negative prompt, so both branches are steered."""
    g = Graph()
    load = split_files(HIDREAM_UNET, HIDREAM_TES, None, FLUX_VAE, shift=3.0,
                       shift_node="ModelSamplingSD3")
    shared = common(g, load, SDXL_PROMPT, DIT_NEGATIVE, HIDREAM_SAMPLING,
                    latent="EmptySD3LatentImage")
    skew_vs_baseline(g, shared, 0.92, 3.0)
    g.note("HiDream-I1 Full (17B; 16 double-stream and 32 single-stream blocks over [image; "
           "text], its text from CLIP-L, CLIP-G, T5 and Llama 3.1 in QuadrupleCLIPLoader) "
           "samples with real CFG 5 and a negative prompt on the flow shift 3 that "
           "ModelSamplingSD3 sets on the model both columns sample: branch 'both' steers the "
           "cond and uncond calls. "
           + UNTESTED.format(a="0.92", b="3", family="HiDream",
                             why="about SDXL's per-call change at its paper point",
                             mirror="the mirrored α 1.08") +
           "layers: 'double' (double blocks 0-15), 'single' (single blocks 16-47), "
           "'early' / 'middle' / 'late' thirds of all 48, or indices. Dev and Fast load the "
           "same way (shift 6 and 3, lcm, CFG 1: one branch); E1's reference image is "
           "steered with the sequence and kept off the probe's maps.",
           (0, below(shared.latent)), size=(WIDTH, 460))
    return g


FLUX2_STEPS = 20


def flux2_skew():
    """FLUX.2 [dev] as ComfyUI's own Flux.2 template samples it: a guider per column (the model
    differs), the same noise, sampler and resolution-dependent schedule (Flux2Scheduler) for
    both, guidance 4 on the positive, one (cond) branch."""
    g = Graph()
    load = split_files(FLUX2_UNET, (FLUX2_TE,), "flux2", FLUX2_VAE)
    loaded = load(g)
    text = g.node("CLIPTextEncode", (0, loaded.bottom), [SDXL_PROMPT], title="Positive prompt",
                  size=(WIDTH, 170))
    g.link(*loaded.clip, text, "clip")
    pos = g.node("FluxGuidance", (0, below(text)), [4.0])
    g.link(text, 0, pos, "conditioning")
    latent = g.node("EmptyFlux2LatentImage", (0, below(pos)), [1024, 1024, 1])
    noise = g.node("RandomNoise", (0, below(latent)), [SEED, "fixed"])
    sampler = g.node("KSamplerSelect", (0, below(noise)), ["euler"])
    sigmas = g.node("Flux2Scheduler", (0, below(sampler)), [FLUX2_STEPS, 1024, 1024])
    room = HEIGHT[SKEW]
    alpha, beta = 0.92, 3.5
    decoded = []
    for column, (title, patch) in enumerate((
            ("Baseline", None),
            (f"Skew Circulation α {alpha:.2f}, β {beta:g}", (SKEW, skew_widgets(alpha, beta))))):
        x, source = 440 + column * COLUMN, loaded.model
        if patch is not None:
            node = g.node(patch[0], (x, 0), patch[1])
            g.link(*loaded.model, node, "model")
            source = (node, 0)
        guider = g.node("BasicGuider", (x, room + TITLE + GAP), title=f"Guider: {title}")
        g.link(*source, guider, "model")
        g.link(pos, 0, guider, "conditioning")
        run = g.node("SamplerCustomAdvanced", (x, below(guider)), title=f"Sampler: {title}")
        for name, src in (("noise", noise), ("guider", guider), ("sampler", sampler),
                          ("sigmas", sigmas), ("latent_image", latent)):
            g.link(src, 0, run, name)
        dec = g.node("VAEDecode", (x, below(run)))
        g.link(run, 0, dec, "samples")
        g.link(*loaded.vae, dec, "vae")
        bottom = below(dec, gap=20)
        g.group(title, x - 20, -GROUP_HEAD, WIDTH + 40, bottom + GROUP_HEAD)
        decoded.append(dec)
    stitch_all(g, decoded, 440 + 2 * COLUMN)
    g.note("FLUX.2 [dev] (ComfyUI 0.3.72 and later; klein loads the same way, with its own text "
           "encoder) is guidance-distilled: FluxGuidance 4 sets its guidance and it samples "
           "with one (cond) branch, so Skew Circulation's branch 'both' and 'cond' are the "
           "same. ComfyUI pads every Flux.2 prompt to 512 text tokens, which are steered with "
           "the image's. "
           + UNTESTED.format(a="0.92", b="3.5", family="Flux.2",
                             why="about SDXL's per-call change at its paper point",
                             mirror="the mirrored α 1.08") +
           "layers: 'double' (double blocks 0-7), 'single' (single blocks 8-55), "
           "'early' / 'middle' / 'late' thirds of all 56, or indices. With FluxKVCache (the "
           "klein KV edit template) every step is steered as without it.",
           (0, below(sigmas)), size=(WIDTH, 480))
    return g


# name (the template's title) -> (builder, thumbnail card)
WORKFLOWS = {
    "SDXL Skew Circulation vs baseline": (sdxl_skew, {
        "tag": "SDXL", "purpose": "Fix broken samples: one seed with and without circulation",
        "columns": [("baseline", "unpatched"), ("Skew Circulation", "α 1.05, β 3")],
        "settings": "paper point · CFG 5 · 30 steps · 1024²"}),
    "SDXL Adaptive vs static, excessive setting": (sdxl_adaptive, {
        "tag": "SDXL", "purpose": "Too strong a setting: static collapses, adaptive holds",
        "columns": [("baseline", "unpatched"), ("static", "α 1.2, β 5"),
                    ("adaptive", "α 1.2, β 5")],
        "settings": "paper table 6 · CFG 5 · 30 steps"}),
    "SD3 Skew Circulation vs baseline": (sd3_skew, {
        "tag": "SD3", "purpose": "SD3 steers with α below 1: one seed with and without",
        "columns": [("baseline", "unpatched"), ("Skew Circulation", "α 0.95, β 3")],
        "settings": "paper appendix B.1 · CFG 5 · 30 steps"}),
    "SDXL Stability Probe and Report": (sdxl_probe, {
        "tag": "SDXL", "purpose": "See where attention is stable: Align_X per layer, λ maps",
        "columns": [("Stability Probe", "records"), ("Stability Report", "chart, maps"),
                    ("Stability Rank", "keeps 2 of 4")],
        "settings": "the images are unchanged · batch of 4 · cond branch"}),
    "SDXL operating grid, paper table 3": (sdxl_grid, {
        "tag": "SDXL", "purpose": "Sweep α and β: fidelity against diversity",
        "grid": {"rows": [f"α {a:.2f}" for a in TABLE3],
                 "cells": [[f"β {b:g}" for b in betas] for betas in TABLE3.values()]},
        "settings": "baseline + 8 points · one seed"}),
    "Flux Skew Circulation vs baseline": (flux_skew, {
        "tag": "Flux", "purpose": "FLUX.1 dev at a starting point: one seed with and without",
        "columns": [("baseline", "unpatched"), ("Skew Circulation", "α 0.90, β 3.5")],
        "settings": "no paper point · CFG 1 · guidance 3.5 · 20 steps"}),
    # "Flux 2", not "Flux.2": frontend 1.27 loses a template whose name has a dot
    "Flux 2 Skew Circulation vs baseline": (flux2_skew, {
        "tag": "Flux.2", "purpose": "FLUX.2 dev at a starting point: one seed with and without",
        "columns": [("baseline", "unpatched"), ("Skew Circulation", "α 0.92, β 3.5")],
        "settings": "no paper point · guidance 4 · 20 steps · 1024²"}),
    "Chroma Skew Circulation vs baseline": (chroma_skew, {
        "tag": "Chroma", "purpose": "Chroma1-HD at a starting point: one seed with and without",
        "columns": [("baseline", "unpatched"), ("Skew Circulation", "α 0.85, β 4")],
        "settings": "no paper point · CFG 4 · 26 steps · 1024²"}),
    "Qwen Image Skew Circulation vs baseline": (qwen_skew, {
        "tag": "Qwen-Image", "purpose": "Qwen-Image at SD3's point: one seed with and without",
        "columns": [("baseline", "unpatched"), ("Skew Circulation", "α 0.95, β 3")],
        "settings": "SD3's point · CFG 2.5 · shift 3.1 · 20 steps"}),
    # "Z Image", not "Z-Image": the card's description turns a hyphen into a space
    "Z Image Turbo Skew Circulation vs baseline": (z_image_skew, {
        "tag": "Z-Image Turbo",
        "purpose": "Z-Image Turbo at a starting point: one seed with and without",
        "columns": [("baseline", "unpatched"), ("Skew Circulation", "α 0.94, β 3.5")],
        "settings": "no paper point · CFG 1 · shift 3 · 8 steps · 1024²"}),
    "HiDream I1 Skew Circulation vs baseline": (hidream_skew, {
        "tag": "HiDream-I1",
        "purpose": "HiDream-I1 Full at a starting point: one seed with and without",
        "columns": [("baseline", "unpatched"), ("Skew Circulation", "α 0.92, β 3")],
        "settings": "no paper point · CFG 5 · shift 3 · 50 steps · 1024²"}),
}


# --- Thumbnails -------------------------------------------------------------------------------

THUMB = 512  # square: both frontends show a template's image in a square
FONT_FILES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
              "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
ASCII = {"α": "alpha", "β": "beta", "λ": "lambda", "η": "eta", "·": "-", "²": "^2"}


def _fonts():
    """(bold, regular) loaders: DejaVu when installed (Greek letters), else Pillow's built-in
    font with the Greek spelled out."""
    from PIL import ImageFont

    if all(Path(f).is_file() for f in FONT_FILES):
        return (lambda s: ImageFont.truetype(FONT_FILES[0], s),
                lambda s: ImageFont.truetype(FONT_FILES[1], s), lambda t: t)

    def plain(text):
        for k, v in ASCII.items():
            text = text.replace(k, v)
        return text

    return (lambda s: ImageFont.load_default(size=s), lambda s: ImageFont.load_default(size=s),
            plain)


def _wrap(draw, text, font, width):
    words, lines = text.split(), []
    for word in words:
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def thumbnail(title: str, card: dict, path: Path) -> None:
    """A square card: model family, title, one-line purpose, what is compared, settings."""
    from PIL import Image, ImageDraw

    bold, regular, text = _fonts()
    ink, muted, accent = (242, 244, 248), (176, 186, 204), (88, 166, 255)
    im = Image.new("RGB", (THUMB, THUMB), (24, 30, 42))
    d = ImageDraw.Draw(im)
    pad = 28
    tag_font = bold(26)
    tag = text(card["tag"])
    tw = d.textlength(tag, font=tag_font)
    # top right: frontend 1.58 lays a "Node graph" badge over the top left of the image
    x1 = THUMB - pad
    d.rounded_rectangle((x1 - tw - 24, pad, x1, pad + 40), 8, fill=accent)
    d.text((x1 - 12, pad + 20), tag, font=tag_font, fill=(16, 20, 28), anchor="rm")
    y = pad + 58
    # the title without the family (spelled with a space in a file name: "Qwen Image")
    name = title.removeprefix(card["tag"]).removeprefix(
        card["tag"].replace("-", " ").replace(".", " ")).strip()  # a file name has neither
    name = name[:1].upper() + name[1:]
    title_font = bold(40)
    for line in _wrap(d, text(name), title_font, THUMB - 2 * pad)[:3]:
        d.text((pad, y), line, font=title_font, fill=ink)
        y += 48
    y += 6
    purpose_font = regular(25)
    for line in _wrap(d, text(card["purpose"]), purpose_font, THUMB - 2 * pad)[:2]:
        d.text((pad, y), line, font=purpose_font, fill=muted)
        y += 31
    y += 14
    bottom = THUMB - pad - 40
    if "columns" in card:
        cols = card["columns"]
        gap = 12
        w = (THUMB - 2 * pad - gap * (len(cols) - 1)) / len(cols)
        label_font, value_font = bold(24 if len(cols) < 3 else 21), regular(22)
        for i, (label, value) in enumerate(cols):
            x0 = pad + i * (w + gap)
            d.rounded_rectangle((x0, y, x0 + w, bottom), 10, outline=accent, width=3,
                                fill=(34, 44, 62))
            mid = x0 + w / 2
            lines = _wrap(d, text(label), label_font, w - 16)
            ty = (y + bottom) / 2 - 16 * len(lines) - (12 if value else 0)
            for line in lines:
                d.text((mid, ty), line, font=label_font, fill=ink, anchor="mt")
                ty += 30
            if value:
                for line in _wrap(d, text(value), value_font, w - 16):
                    d.text((mid, ty + 6), line, font=value_font, fill=accent, anchor="mt")
                    ty += 28
    else:
        grid = card["grid"]
        rows = grid["rows"]
        head = 118
        h = (bottom - y - 6 * (len(rows) - 1)) / len(rows)
        cell_font = bold(22)
        for r, (row, cells) in enumerate(zip(rows, grid["cells"], strict=True)):
            y0 = y + r * (h + 6)
            d.text((pad, y0 + h / 2), text(row), font=cell_font, fill=ink, anchor="lm")
            w = (THUMB - 2 * pad - head - 8 * 2) / 3
            for c, cell in enumerate(cells):
                x0 = pad + head + c * (w + 8)
                d.rounded_rectangle((x0, y0, x0 + w, y0 + h), 8, outline=accent, width=2,
                                    fill=(34, 44, 62))
                d.text((x0 + w / 2, y0 + h / 2), text(cell), font=cell_font, fill=accent,
                       anchor="mm")
    size = 23
    while size > 14 and d.textlength(text(card["settings"]), font=regular(size)) > THUMB - 2 * pad:
        size -= 1
    d.text((pad, THUMB - pad - 14), text(card["settings"]), font=regular(size), fill=muted,
           anchor="lm")
    im.save(path, quality=90)


def main():
    OUT.mkdir(exist_ok=True)
    for name, (build, card) in WORKFLOWS.items():
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(build().to_json(), indent=1, ensure_ascii=False) + "\n")
        thumbnail(name, card, path.with_suffix(".jpg"))
        print(f"wrote {path} and its thumbnail")


if __name__ == "__main__":
    main()

