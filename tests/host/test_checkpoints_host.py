"""Tiny checkpoints on disk, loaded and sampled by ComfyUI's own nodes as a workflow would:
CheckpointLoaderSimple -> circulation node -> KSampler -> VAEDecode."""

from __future__ import annotations

import pytest
import torch
from host.node_calls import adaptive, skew

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def checkpoints(comfy_host, tmp_path_factory):
    import folder_paths
    from host import tiny_models

    folder = tmp_path_factory.mktemp("checkpoints")
    tiny_models.write_tiny_sd3_checkpoint(folder / "tiny_sd3.safetensors")
    tiny_models.register_tiny_sdxl_detection()
    tiny_models.write_tiny_sdxl_checkpoint(folder / "tiny_sdxl.safetensors")
    folder_paths.add_model_folder_path("checkpoints", str(folder))
    yield folder
    folder_paths.folder_names_and_paths["checkpoints"][0].remove(str(folder))


@pytest.mark.parametrize("name, base_class, channels, conditioning, alpha", [
    ("tiny_sd3", "SD3", 16, "sd3_conditioning", 0.95),
    ("tiny_sdxl", "SDXL", 4, "sdxl_conditioning", 1.05),
])
def test_checkpoint_samples_through_the_nodes(nodes, checkpoints, name, base_class, channels,
                                              conditioning, alpha):
    from host import tiny_models

    import nodes as comfy_nodes

    model, clip, vae = comfy_nodes.CheckpointLoaderSimple().load_checkpoint(
        f"{name}.safetensors")
    assert type(model.model).__name__ == base_class and clip is None
    make_cond = getattr(tiny_models, conditioning)
    latent = {"samples": torch.zeros(1, channels, 16, 16)}

    def ksample(patched):
        with torch.inference_mode():
            (out,) = comfy_nodes.KSampler().sample(patched, 0, 2, 2.0, "euler", "normal",
                                                   make_cond(1), make_cond(2), latent)
        return out["samples"]

    base = ksample(model)
    assert torch.equal(ksample(skew(nodes, model, alpha=1.0)), base)
    for patched in (skew(nodes, model, alpha=alpha), adaptive(nodes, model)):
        steered = ksample(patched)
        assert torch.isfinite(steered).all() and not torch.equal(steered, base)
    with torch.inference_mode():
        (image,) = comfy_nodes.VAEDecode().decode(vae, {"samples": steered})
    assert image.shape == (1, 128, 128, 3) and 0 <= image.min() and image.max() <= 1
