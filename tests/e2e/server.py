"""A real ComfyUI server for the end-to-end tier, on a free loopback port, in a fresh base dir.

The pack is linked into custom_nodes (as ComfyUI-Manager or git clone would place it), next to
a test-only pack; tiny SDXL and SD3 checkpoints are written into models/checkpoints at start.
The user directory is fresh and pre-seeded (no first-run dialog); the server is stopped by PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .tiny_checkpoints import write_tiny_checkpoints

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_DIR_NAME = "hopfield-circulation"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, comfy_root: Path, base: Path, front_end_root: str | None = None):
        self.comfy_root, self.base, self.front_end_root = comfy_root, base, front_end_root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None
        self.log_path = base / "server.log"

    @property
    def user_dir(self) -> Path:
        return self.base / "user"

    def prepare(self) -> None:
        nodes = self.base / "custom_nodes"
        nodes.mkdir(parents=True, exist_ok=True)
        link = nodes / PACK_DIR_NAME
        if not link.exists():
            link.symlink_to(REPO_ROOT, target_is_directory=True)
        test_pack = nodes / "hc_test_nodes"
        if not test_pack.exists():
            test_pack.symlink_to(Path(__file__).parent / "test_nodes", target_is_directory=True)
        write_tiny_checkpoints(self.base / "models" / "checkpoints")
        settings = self.user_dir / "default" / "comfy.settings.json"
        settings.parent.mkdir(parents=True, exist_ok=True)
        if not settings.exists():
            settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))

    def start(self, timeout: float = 90.0) -> None:
        self.prepare()
        args = [sys.executable, str(Path(__file__).parent / "launch_comfyui.py"),
                str(self.comfy_root), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--base-directory", str(self.base), "--user-directory", str(self.user_dir),
                "--database-url", "sqlite:///:memory:",
                "--disable-auto-launch", "--disable-api-nodes"]
        if self.front_end_root:
            args += ["--front-end-root", self.front_end_root]
        log = open(self.log_path, "w")  # noqa: SIM115 - closed by the process lifetime
        env = {**os.environ, "HC_E2E_PARENT_PID": str(os.getpid())}
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/object_info", timeout=5):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, payload) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def run_prompt(self, prompt: dict, timeout: float = 180.0) -> dict:
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": "hc-e2e"})
        if status != 200:
            raise AssertionError(f"prompt rejected ({status}): {json.dumps(body)[:3000]}")
        prompt_id = body["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed"):
                return history[prompt_id]
            if prompt_id in history and history[prompt_id].get("status", {}).get(
                    "status_str") == "error":
                raise AssertionError(f"prompt failed: {json.dumps(history[prompt_id])[:4000]}"
                                     f"\n{self.log()}")
            time.sleep(0.3)
        raise AssertionError(f"prompt did not finish in {timeout} s\n{self.log()}")


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """A UI-format workflow as an API prompt, the way the frontend's graphToPrompt does it:
    widget values fill the node's widget inputs in definition order (a seed's
    'control_after_generate' value is skipped), links become [node id, output slot]."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in ("Note", "MarkdownNote") or node.get("mode", 0) in (2, 4):
            continue
        info = object_info[node["type"]]
        spec = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link")}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name, definition in spec.items():
            if name in linked:
                link = links[linked[name]]
                inputs[name] = [str(link[1]), link[2]]
                continue
            kind = definition[0]
            options = definition[1] if len(definition) > 1 else {}
            is_widget = isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN",
                                                           "COMBO")
            if not is_widget or options.get("forceInput") or not values:
                continue
            inputs[name] = values.pop(0)
            if options.get("control_after_generate") and values:
                values.pop(0)
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def newer_host_reason(missing: set[str]) -> str | None:
    """Why a bundled workflow cannot load on this host, when every node type it needs and the
    host lacks came with a newer ComfyUI (``NEWER_HOST_NODES`` in scripts/make_workflows.py,
    e.g. Flux.2's); None otherwise (then a missing type is a failure)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_workflows", REPO_ROOT / "scripts" / "make_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    newer = module.NEWER_HOST_NODES
    if not missing or not missing <= newer.keys():
        return None
    brought = ", ".join(sorted({newer[kind] for kind in missing}))
    return f"this host has no {', '.join(sorted(missing))}: {brought}"
