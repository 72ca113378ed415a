"""What lets torchvision import beside a CPU build of torch, for the host tier (tests/conftest.py)
and the end-to-end tier's server (tests/e2e/launch_comfyui.py)."""

from __future__ import annotations

import torch


def apply_torchvision_cpu_shim() -> None:
    """torchvision 0.28 for torch 2.13 is a CUDA build: its import registers fake kernels for
    ops its CPU-less _C never defined. Defining the two schemas first lets it import (test set-up
    only; nothing here runs inside the pack). Only beside a CPU build of torch: a torchvision
    whose _C defines them (any CUDA build of torch) aborts the process on a second definition."""
    if torch.version.cuda is not None:
        return
    try:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define(
            "qnms(Tensor dets, Tensor scores, float iou_threshold, float scale, int zero_point) "
            "-> Tensor"
        )
        apply_torchvision_cpu_shim.lib = lib  # keep the library alive
    except RuntimeError:
        pass  # already defined (a real CPU torchvision, or a second call)
