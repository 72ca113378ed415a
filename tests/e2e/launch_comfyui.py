"""Start ComfyUI's main.py for the end-to-end tier: `python launch_comfyui.py COMFY_ROOT args...`.

Applies the torchvision shim first (tests/torchvision_shim.py: beside a CPU build of torch,
torchvision 0.28 is a CUDA build here), then runs main.py as __main__ with the remaining
arguments. The server exits by itself when the test process that started it is gone
(HC_E2E_PARENT_PID), so a killed or timed-out pytest never leaves a server behind.
"""

import os
import runpy
import sys
import threading
import time


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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from torchvision_shim import apply_torchvision_cpu_shim  # noqa: E402

sys.path.pop(0)  # the tests' folders are no modules of the server's
apply_torchvision_cpu_shim()

root = sys.argv[1]
os.chdir(root)
sys.path.insert(0, root)
sys.argv = [os.path.join(root, "main.py"), *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
