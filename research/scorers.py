"""Optional per-image scorers (ImageReward, CLIPScore, LAION aesthetic, LPIPS diversity) that
write score files in the format the tables read.

Each adapter imports its library only when asked for and loads weights only from paths the user
gives: nothing is downloaded (the Hugging Face libraries are put in offline mode). A missing
library or weight file is a ScorerUnavailable whose message says what to install or fetch.
The metric values follow the paper's conventions: CLIPScore is the raw image-text cosine
(≈0.26 for SDXL on COCO), LPIPS diversity a sample's mean LPIPS distance to the other seeds of
its prompt and setting.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .manifest import load_rows


class ScorerUnavailable(RuntimeError):
    """The scorer's library or weights are not here; the message says how to get them."""


@dataclass(frozen=True)
class Item:
    image: Path
    prompt: str | None
    group: tuple  # samples LPIPS diversity compares: same prompt and setting, other seeds


@dataclass(frozen=True)
class ScorerOptions:
    clip_model: str = "ViT-B-32"  # open_clip architecture of a CLIPScore checkpoint file
    clip_weights: Path | None = None  # aesthetic: the CLIP ViT-L-14 the predictor was fit on


Score = Callable[[list[Item]], list[float]]


def _require(module: str, install: str, scorer: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ScorerUnavailable(f"{scorer} needs the Python package '{module}', which is not "
                                f"installed in this environment: {install}")


def _require_file(path: Path | None, scorer: str, what: str, flag: str = "--weights") -> Path:
    if path is None or not Path(path).exists():
        where = f"{flag} {path} does not exist" if path is not None else f"no {flag} given"
        raise ScorerUnavailable(f"{scorer}: {where}; it needs {what}. Download that yourself "
                                f"and pass its path with {flag} (this tool never downloads).")
    return Path(path)


def _torch_and_device():
    _require("torch", "pip install torch", "this scorer")
    _require("PIL", "pip install pillow", "this scorer")
    import torch

    return torch, "cuda" if torch.cuda.is_available() else "cpu"


def _rgb(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the image: {exc}") from exc


def _imagereward(weights: Path, options: ScorerOptions) -> Score:
    _require("ImageReward", "pip install image-reward", "imagereward")
    folder = weights if weights.is_dir() else weights.parent
    checkpoint = weights / "ImageReward.pt" if weights.is_dir() else weights
    what = "ImageReward.pt and med_config.json (huggingface.co/THUDM/ImageReward) into one folder"
    _require_file(checkpoint, "imagereward", what)
    _require_file(folder / "med_config.json", "imagereward", what)
    _, device = _torch_and_device()
    import ImageReward

    model = ImageReward.load(str(checkpoint), device=device,
                             med_config=str(folder / "med_config.json"))
    return lambda items: [float(model.score(_prompt(i), str(i.image))) for i in items]


def _prompt(item: Item) -> str:
    if item.prompt is None:
        raise ValueError(f"{item.image}: the manifest row has no prompt to score against")
    return item.prompt


def _clip_embedder(weights: Path, model_name: str, scorer: str):
    """(embed_image, embed_text) returning unit vectors, from a transformers model folder or
    an open_clip checkpoint file."""
    torch, device = _torch_and_device()
    if weights.is_dir():
        _require("transformers", "pip install transformers", scorer)
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(weights, local_files_only=True).to(device).eval()
        processor = CLIPProcessor.from_pretrained(weights, local_files_only=True)

        def projected(output):  # a tensor before transformers 5, an output object since
            return output if isinstance(output, torch.Tensor) else output.pooler_output

        def image(path):
            inputs = processor(images=_rgb(path), return_tensors="pt").to(device)
            return projected(model.get_image_features(**inputs))

        def text(prompt):
            inputs = processor(text=[prompt], return_tensors="pt", padding=True,
                               truncation=True).to(device)
            return projected(model.get_text_features(**inputs))
    else:
        _require("open_clip", "pip install open_clip_torch", scorer)
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=str(weights), device=device)
        model.eval()
        tokenizer = open_clip.get_tokenizer(model_name)

        def image(path):
            return model.encode_image(preprocess(_rgb(path)).unsqueeze(0).to(device))

        def text(prompt):
            return model.encode_text(tokenizer([prompt]).to(device))

    def unit(embed):
        def run(x):
            with torch.no_grad():
                v = embed(x).float()
            return v / v.norm(dim=-1, keepdim=True)
        return run

    return unit(image), unit(text)


def _clipscore(weights: Path, options: ScorerOptions) -> Score:
    _require_file(weights, "clipscore", "a CLIP model: a transformers folder (config.json and "
                  "weights) or an open_clip checkpoint file for --clip-model")
    image, text = _clip_embedder(weights, options.clip_model, "clipscore")
    return lambda items: [float((image(i.image) * text(_prompt(i))).sum()) for i in items]


def _aesthetic(weights: Path, options: ScorerOptions) -> Score:
    """LAION aesthetic predictor v2: a stack of linear layers (its dropouts aside, no
    activations) on the unit CLIP ViT-L/14 image embedding."""
    what = "the LAION aesthetic predictor (sac+logos+ava1-l14-linearMSE.pth)"
    _require_file(weights, "aesthetic", what)
    clip_what = ("the OpenAI CLIP ViT-L/14 it was fit on (an open_clip checkpoint file or a "
                 "transformers model folder)")
    _require_file(options.clip_weights, "aesthetic", clip_what, "--clip-weights")
    torch, device = _torch_and_device()
    image, _ = _clip_embedder(Path(options.clip_weights), "ViT-L-14", "aesthetic")
    state = torch.load(weights, map_location=device, weights_only=True)
    indices = sorted({int(k.split(".")[1]) for k in state if k.endswith(".weight")})
    layers = [(state[f"layers.{i}.weight"].float(), state[f"layers.{i}.bias"].float())
              for i in indices]

    def score(items):
        values = []
        for item in items:
            x = image(item.image)
            for weight, bias in layers:
                x = x @ weight.T + bias
            values.append(float(x.squeeze()))
        return values
    return score


def _lpips_diversity(weights: Path, options: ScorerOptions) -> Score:
    _require("lpips", "pip install lpips", "lpips_diversity")
    _require_file(weights, "lpips_diversity", "torchvision's AlexNet weights "
                  "(alexnet-owt-7be5be79.pth; LPIPS's own linear layers ship with the package)")
    torch, device = _torch_and_device()
    import lpips

    model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    backbone = torch.load(weights, map_location="cpu", weights_only=True)
    # lpips slices AlexNet's `features` keeping their indices: slice2.3.weight = features.3
    model.net.load_state_dict({key: backbone[f"features.{key.split('.', 1)[1]}"]
                               for key in model.net.state_dict()})
    model = model.to(device).eval()

    def tensor(path):
        import numpy as np

        return lpips.im2tensor(np.asarray(_rgb(path))).to(device)  # [-1, 1], as LPIPS wants

    def score(items):
        groups: dict[tuple, list[int]] = {}
        for index, item in enumerate(items):
            groups.setdefault(item.group, []).append(index)
        values = [float("nan")] * len(items)
        for members in groups.values():
            images = [tensor(items[i].image) for i in members]
            for a, index in enumerate(members):
                with torch.no_grad():
                    distances = [float(model(images[a], images[b])) for b in range(len(members))
                                 if b != a]
                values[index] = sum(distances) / len(distances) if distances else float("nan")
        return values
    return score


SCORERS: dict[str, Callable[[Path, ScorerOptions], Score]] = {
    "imagereward": _imagereward, "clipscore": _clipscore, "aesthetic": _aesthetic,
    "lpips_diversity": _lpips_diversity,
}


def load_scorer(name: str, weights: Path, options: ScorerOptions) -> Score:
    if name not in SCORERS:
        raise ScorerUnavailable(f"unknown scorer '{name}'; choose from {', '.join(SCORERS)}")
    os.environ["HF_HUB_OFFLINE"] = "1"  # a missing file is an error here, never a download
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        return SCORERS[name](Path(weights), options)
    except ScorerUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed load is reported, not a stack trace
        raise ScorerUnavailable(f"{name}: could not load the weights at {weights}: "
                                f"{type(exc).__name__}: {exc}") from exc


def manifest_items(manifest: Path) -> list[tuple[str, Item]]:
    """(file as the manifest lists it, Item) for each row's first image."""
    items = []
    for row in load_rows(manifest):
        if not row.get("images"):
            continue
        group = (row.get("prompt"), row.get("alpha"), row.get("beta"),
                 tuple(sorted((k, str(v)) for k, v in (row.get("params") or {}).items())))
        image = Path(manifest).parent / row["images"][0]
        items.append((row["images"][0], Item(image, row.get("prompt"), group)))
    return items


def write_scores(path: Path, metric: str, files: list[str], values: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", metric])
        writer.writerows(zip(files, values, strict=True))
