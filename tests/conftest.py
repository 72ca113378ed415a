"""Test tiers: core (pure torch, always), host (real ComfyUI in-process), e2e (real server).

The host is ComfyUI at $COMFYUI_PATH, else ~/comfy/ComfyUI. Without it, host and e2e tests are
skipped with the reason. The pack is imported as the package ``hopfield_circulation`` from the
repository root, exactly as ComfyUI imports a custom node folder (relative imports and all).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "hopfield_circulation"


def _register_pack() -> None:
    if PACKAGE in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        PACKAGE, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)


_register_pack()
# Shared test helpers (tests/host/tiny_models.py, ...) import as `host.tiny_models`.
sys.path.insert(0, str(REPO_ROOT / "tests"))


def comfyui_path() -> Path:
    return Path(os.environ.get("COMFYUI_PATH") or Path.home() / "comfy" / "ComfyUI").expanduser()


def _load_host() -> str | None:
    """Import ComfyUI on the CPU; returns why it can't be used, or None when it can."""
    root = comfyui_path()
    if not (root / "comfy" / "model_management.py").is_file():
        return f"ComfyUI not found at {root} (set COMFYUI_PATH)"
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        from torchvision_shim import apply_torchvision_cpu_shim

        apply_torchvision_cpu_shim()
        import comfy.cli_args

        comfy.cli_args.args.cpu = True  # before model_management asks for CUDA
        # ComfyUI's PyTorch (SDPA) attention, as on the GPUs users run, rather than the CPU
        # default sub-quadratic attention, which asks psutil for free memory in every call
        # (under torch.compile: a graph break per attention call).
        comfy.cli_args.args.use_pytorch_cross_attention = True
        import comfy.model_management  # noqa: F401
        import comfy.sample  # noqa: F401
        import comfy.sd  # noqa: F401
    except Exception as exc:  # an incomplete install is a reason to skip, stated
        return f"ComfyUI at {root} does not import here: {type(exc).__name__}: {exc}"
    return None


_HOST_REASON: list[str | None] = []


def host_unavailable_reason() -> str | None:
    if not _HOST_REASON:
        _HOST_REASON.append(_load_host())
    return _HOST_REASON[0]


def pytest_collection_modifyitems(config, items):
    wanted = [i for i in items if i.get_closest_marker("host") or i.get_closest_marker("e2e")]
    if not wanted:
        return
    reason = host_unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in wanted:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def comfy_host():
    reason = host_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return comfyui_path()
