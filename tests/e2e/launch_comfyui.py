"""Start ComfyUI's main.py for the end-to-end tier: `python launch_comfyui.py COMFY_ROOT args...`.

Beside a CPU build of torch, applies the torchvision shim first (torchvision 0.28 is a CUDA build
here; see tests/conftest.py), then runs main.py as __main__ with the remaining arguments. The
server exits by itself when the test process that started it is gone (HC_E2E_PARENT_PID), so a
killed or timed-out pytest never leaves a server behind.
"""

import os
import runpy
import sys
import threading
import time

import torch


def _exit_with_parent(parent: int) -> None:
    def watch():
        while True:
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(0)  # nothing of the test server is worth a clean shutdown
            except PermissionError:
                pass
            time.sleep(1.0)

    threading.Thread(target=watch, name="hc-e2e-parent-watch", daemon=True).start()


if os.environ.get("HC_E2E_PARENT_PID"):
    _exit_with_parent(int(os.environ["HC_E2E_PARENT_PID"]))

# Only beside a CPU build of torch (as tests/conftest.py): a torchvision whose _C defines the two
# ops (any CUDA build of torch) aborts the server on a second definition
if torch.version.cuda is None:
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
