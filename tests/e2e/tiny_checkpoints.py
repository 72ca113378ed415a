"""Tiny checkpoints for the test server, written at test time (no downloaded weights).

SD3: tests/host/tiny_models.write_tiny_sd3_checkpoint. SDXL: the host tier's tiny UNet plus a
random 4-channel TAESD, saved as one .safetensors file; the test-only node pack
(tests/e2e/test_nodes) lets the server's checkpoint detection recognise it as SDXL.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_SDXL = "tiny_sdxl_hopfield_test.safetensors"
TINY_SD3 = "tiny_sd3_hopfield_test.safetensors"


def write_tiny_sdxl_checkpoint(path: Path, seed: int = 0) -> None:
    import comfy.taesd.taesd
    from host.tiny_models import init_weights, tiny_sdxl
    from safetensors.torch import save_file

    patcher = tiny_sdxl(seed)
    state = {f"model.{k}": v.contiguous() for k, v in patcher.model.state_dict().items()
             if k.startswith("diffusion_model.")}
    vae = comfy.taesd.taesd.TAESD(latent_channels=4)
    init_weights(vae, seed + 1)  # comfy.ops layers start uninitialised
    with torch.no_grad():
        vae.vae_scale.fill_(1.0)
        vae.vae_shift.fill_(0.0)
    state |= {f"first_stage_model.{k}": v.contiguous() for k, v in vae.state_dict().items()}
    save_file(state, str(path))


def write_tiny_checkpoints(folder: Path) -> None:
    from host.tiny_models import write_tiny_sd3_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / TINY_SD3).exists():
        write_tiny_sd3_checkpoint(folder / TINY_SD3)
    if not (folder / TINY_SDXL).exists():
        write_tiny_sdxl_checkpoint(folder / TINY_SDXL)
