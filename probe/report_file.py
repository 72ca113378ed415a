"""The Stability Report's file: every measure, map and per-step series as .safetensors.

Layout (read back by research tools): ``layer_mean/<measure>`` [samples, layers],
``block_mean/<measure>`` [samples, groups], ``map/<group>`` [samples, H, W], ``series/*`` per
recorded (step, layer, branch); JSON metadata under "hopfield_circulation" names the samples,
groups, layers and the probe's settings.
"""

from __future__ import annotations

import json
import math
import os
import uuid

import torch

from ..vocabulary import MEASURES
from .registry import ProbeRun
from .summary import SCALE_NOTE, Summary


def output_path(filename_prefix: str) -> str:
    """A new file name under ComfyUI's output folder, numbered like its saved images."""
    import folder_paths

    output_dir = folder_paths.get_output_directory()
    folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix, output_dir)
    return os.path.join(folder, f"{name}_{counter:05}_.safetensors")


def _write_new(directory: str, data: bytes) -> str:
    """Write ``data`` to a new temporary file in ``directory``, for an atomic rename. The file
    is created with mode 0666 less the process umask, like every file ComfyUI saves (mkstemp's
    0600, or the 0600 safetensors' own writer gives, would hide the report from other users
    and tools on a shared server)."""
    for _ in range(100):
        tmp = os.path.join(directory, f".{uuid.uuid4().hex}.safetensors.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except BaseException:
            os.remove(tmp)
            raise
        return tmp
    raise FileExistsError(f"no free temporary file name in {directory}")


def save_report(path: str, summary: Summary, run: ProbeRun, settings: dict) -> None:
    """Every per-layer, per-step series and the maps as .safetensors, written atomically."""
    from safetensors.torch import save

    tensors = {f"layer_mean/{name}": summary.layer_values[..., i].contiguous()
               for i, name in enumerate(MEASURES)}
    tensors |= {f"block_mean/{name}": summary.group_values[..., i].contiguous()
                for i, name in enumerate(MEASURES)}
    tensors |= {f"map/{group}": m.contiguous() for group, m in summary.maps.items()}
    series = run.series
    if series:
        # one device-to-host copy for the whole series: [N, 4, B]
        tensors["series/values"] = torch.stack([e.values for e in series]).float().cpu()
        tensors["series/step"] = torch.tensor([-1 if e.step is None else e.step
                                               for e in series])
        tensors["series/sigma"] = torch.tensor([math.nan if e.sigma is None else e.sigma
                                                for e in series], dtype=torch.float64)
        tensors["series/layer"] = torch.tensor([e.index for e in series])
        tensors["series/branch"] = torch.tensor([e.branch for e in series])
    metadata = {
        "family": summary.family, "samples": summary.samples, "groups": list(summary.groups),
        "layers": [{"index": i, "kind": k, "group": g} for i, k, g in summary.layers],
        "measures": list(MEASURES), "series_kinds": [e.kind for e in series],
        "series_layout": "series/values[n, measure, sample row of the branch]; step, sigma, "
                         "layer, branch (0 cond, 1 uncond) per n",
        "settings": settings, "run": run.number, "note": SCALE_NOTE,
    }
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    data = save(tensors, metadata={"hopfield_circulation": json.dumps(metadata)})
    tmp = _write_new(directory, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
