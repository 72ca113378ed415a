"""Tiny checkpoints for the test server, written at test time (no downloaded weights).

SD3: tests/host/tiny_models.write_tiny_sd3_checkpoint. SDXL: the host tier's tiny UNet plus a
random 4-channel TAESD, saved as one .safetensors file; the test-only node pack
(tests/e2e/test_nodes) lets the server's checkpoint detection recognise it as SDXL.
"""

from __future__ import annotations

from pathlib import Path

TINY_SDXL = "tiny_sdxl_hopfield_test.safetensors"
TINY_SD3 = "tiny_sd3_hopfield_test.safetensors"


def write_tiny_sdxl_checkpoint(path: Path, seed: int = 0) -> None:
    from host.tiny_models import tiny_sdxl, write_checkpoint

    write_checkpoint(tiny_sdxl(seed), 4, path, seed)


def write_tiny_checkpoints(folder: Path) -> None:
    from host.tiny_models import write_tiny_sd3_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / TINY_SD3).exists():
        write_tiny_sd3_checkpoint(folder / TINY_SD3)
    if not (folder / TINY_SDXL).exists():
        write_tiny_sdxl_checkpoint(folder / TINY_SDXL)
