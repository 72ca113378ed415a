"""Full-size SDXL, SD3-medium and SD3.5 models built from ComfyUI's own model configs with
seeded random weights (no checkpoint anywhere), and their conditioning: what the GPU tier's
smoke test and benchmarks/bench_e2e_gpu.py sample. The UNet/MMDiT configurations are the ones
comfy/model_detection.py detects from the released checkpoints.
"""

from __future__ import annotations

import math

import torch

SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
    "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
    "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
    "context_dim": 2048, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}


def mmdit(depth: int, patches: int, qk_norm: str | None = None, image_self=()) -> dict:
    """SD3-family MMDiT: hidden 64 * depth, 64-channel heads, T5/CLIP context of 4096."""
    hidden = 64 * depth
    config = {
        "in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": depth,
        "input_size": None, "adm_in_channels": 2048,
        "context_embedder_config": {"target": "torch.nn.Linear",
                                    "params": {"in_features": 4096, "out_features": hidden}},
        "num_patches": patches, "pos_embed_max_size": round(math.sqrt(patches)),
        "pos_embed_scaling_factor": None, "x_block_self_attn_layers": list(image_self),
    }
    if qk_norm:
        config["qk_norm"] = qk_norm
    return config


MODELS = {
    "sdxl": ("SDXL", SDXL_UNET),
    "sd3-medium": ("SD3", mmdit(24, 36864)),
    "sd3.5-medium": ("SD3", mmdit(24, 147456, "rms", range(13))),
    "sd3.5-large": ("SD3", mmdit(38, 36864, "rms")),
}


def random_init(module: torch.nn.Module, seed: int = 0) -> None:
    """Weights ~ N(0, 1/fan_in), norm scales ~1, biases small: activations stay O(1), so fp16
    sampling stays finite, as with trained weights. Drawn on the weights' device: a CPU
    generator takes seconds per billion weights, device time on a lent GPU."""
    device = next(module.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, device=device).to(p.device, p.dtype)
            if p.ndim >= 2:
                p.copy_(noise / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.02 * noise)
        for name, b in module.named_buffers():
            if name.startswith("diffusion_model.") and b.is_floating_point():
                b.copy_(0.1 * torch.randn(b.shape, generator=gen, device=device).to(b.dtype))


def build(name: str, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """A ModelPatcher around the named full-size model, weights on ``device`` in ``dtype``."""
    import comfy.model_patcher
    import comfy.supported_models

    config_class, unet = MODELS[name]
    config = getattr(comfy.supported_models, config_class)(dict(unet))
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=device)
    model.to(device)
    random_init(model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def conditioning(name: str, batch: int, device, seed: int):
    """Random positive or negative conditioning of the model's shapes (77 CLIP tokens for
    SDXL, 154 T5+CLIP tokens for the MMDiTs, with pooled vectors)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if name == "sdxl":
        context = torch.randn(batch, 77, 2048, generator=gen)
        extra = {"pooled_output": torch.randn(batch, 1280, generator=gen),
                 "width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0,
                 "target_width": 1024, "target_height": 1024}
    else:
        context = torch.randn(batch, 154, 4096, generator=gen)
        extra = {"pooled_output": torch.randn(batch, 2048, generator=gen)}
    return [[context.to(device), extra]]


def latent_channels(name: str) -> int:
    return 4 if name == "sdxl" else 16


def sample(patcher, name: str, *, steps: int, size: int = 1024, cfg: float = 5.0,
           batch: int = 1, seed: int = 0, sampler: str = "euler"):
    """One KSampler-equivalent run (comfy.sample.sample) at size x size pixels."""
    import comfy.sample

    device = patcher.load_device
    latent = torch.zeros(batch, latent_channels(name), size // 8, size // 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return comfy.sample.sample(
            patcher, noise, steps, cfg, sampler, "normal" if name == "sdxl" else "simple",
            conditioning(name, batch, device, 1), conditioning(name, batch, device, 2), latent,
            seed=seed, disable_pbar=True)
