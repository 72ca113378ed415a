"""Start ComfyUI's main.py for the end-to-end tier: `python launch_comfyui.py COMFY_ROOT args...`.

Applies the CPU torchvision shim first (torchvision 0.28 is a CUDA build here; see
tests/conftest.py), then runs main.py as __main__ with the remaining arguments.
"""

import os
import runpy
import sys

import torch

try:
    _lib = torch.library.Library("torchvision", "DEF")
    _lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold, float scale, "
                "int zero_point) -> Tensor")
except RuntimeError:
    pass

root = sys.argv[1]
os.chdir(root)
sys.path.insert(0, root)
sys.argv = [os.path.join(root, "main.py"), *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
