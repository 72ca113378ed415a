"""Tiny SDXL, SD1.x, SD3/SD3.5, Flux (Flux.1 and Flux.2), Chroma, Qwen-Image, Lumina 2 and
Z-Image models (and unsupported ones) built in-process with real ComfyUI classes, random
conditioning for them, and tiny checkpoints on disk (no downloaded weights anywhere).

Sizes follow ../shared/notes/comfyui-host.md §5: a 4.5 M-parameter SDXL UNet (transformers at
two levels plus the middle block) and a 1.1 M-parameter two-block MMDiT. ComfyUI creates layers
with uninitialised memory, so every parameter is set from a seeded generator.

Checkpoints (`write_tiny_sd3_checkpoint`, `write_tiny_sdxl_checkpoint`) hold the diffusion model
and a random TAESD VAE, no text encoder. ComfyUI detects the tiny MMDiT as SD3 as it is; it only
recognises SDXL at full size, so `register_tiny_sdxl_detection()` teaches this process the tiny
UNet (a test-only model config at the front of comfy.supported_models.models).
"""

from __future__ import annotations

import dataclasses
import math

import torch

SDXL_UNET = dict(
    use_checkpoint=False, image_size=32, use_spatial_transformer=True, legacy=False,
    num_classes="sequential", adm_in_channels=2816, in_channels=4, out_channels=4,
    model_channels=32, num_res_blocks=[1, 1, 1], channel_mult=[1, 2, 4],
    transformer_depth=[0, 1, 1], transformer_depth_output=[0, 0, 1, 1, 1, 1],
    transformer_depth_middle=1, context_dim=64, use_linear_in_transformer=True,
    use_temporal_resblock=False, use_temporal_attention=False,
)

SD3_MMDIT = dict(
    in_channels=16, patch_size=2, out_channels=16, depth=2, input_size=None, adm_in_channels=64,
    context_embedder_config={
        "target": "torch.nn.Linear", "params": {"in_features": 64, "out_features": 128}
    },
    num_patches=1024, pos_embed_max_size=32, pos_embed_scaling_factor=None,
    x_block_self_attn_layers=[],
)


# SD1.x-style UNet: 768-wide context, no ADM, 8 heads, conv (not linear) transformer projections.
SD15_UNET = dict(
    use_checkpoint=False, image_size=32, use_spatial_transformer=True, legacy=False,
    adm_in_channels=None, in_channels=4, out_channels=4, model_channels=32,
    num_res_blocks=[1, 1], channel_mult=[1, 2], transformer_depth=[1, 1],
    transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1, context_dim=768,
    use_linear_in_transformer=False, use_temporal_resblock=False, use_temporal_attention=False,
)

FLUX = dict(
    image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32,
    hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=1, depth_single_blocks=1,
    axes_dim=[8, 12, 12], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=False,
)

# What detect_unet_config reads from the tiny SDXL checkpoint, reduced to the keys that tell it
# apart (a model config matches when all of its unet_config items equal the detected ones).
TINY_SDXL_DETECTED = {
    "model_channels": 32, "context_dim": 64, "adm_in_channels": 2816,
    "transformer_depth": [0, 1, 1], "transformer_depth_output": [0, 0, 1, 1, 1, 1],
    "transformer_depth_middle": 1, "use_linear_in_transformer": True,
    "use_temporal_attention": False,
}


def init_weights(module: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif name.endswith("weight"):  # norm scales
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
        for name, b in module.named_buffers():  # MMDiT's pos_embed is an uninitialised buffer
            if name.startswith("diffusion_model.") and b.is_floating_point():
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))


def _patcher(model):
    import comfy.model_management
    import comfy.model_patcher

    cpu = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def tiny_sdxl(seed: int = 0):
    """A ModelPatcher around a tiny ``model_base.SDXL`` (EPS) with 14 self-attention layers."""
    model = _sdxl_config().get_model({})
    init_weights(model, seed)
    return _patcher(model)


def _sdxl_config():
    import comfy.supported_models

    config = comfy.supported_models.SDXL(dict(SDXL_UNET))
    config.unet_config["num_head_channels"] = 16  # BASE forces 64; 32-64 channels need 16
    config.set_inference_dtype(torch.float32, None)
    return config


def tiny_sdxl_with_fp8_values(seed: int = 0, smoothed: bool = False):
    """``tiny_sdxl(seed)`` as newer ComfyUI loads a checkpoint whose attn1.to_v weights are
    float8_e4m3fn with a scale: quantised mixed-precision layers (comfy.quant_ops), computed
    as on a device without fp8 matmuls. ``smoothed``: each also carries an AWQ input scale
    (pre_quant_scale, which ModelOpt's nvfp4 checkpoints bring and the layer multiplies into
    its input). Needs a host with comfy.quant_ops."""
    import json

    import comfy.model_management
    import comfy.ops
    import comfy.utils

    state = tiny_sdxl(seed).model.state_dict()
    layers = {}
    for key in [k for k in state if k.endswith("attn1.to_v.weight")]:
        scale = state[key].abs().max() / 448  # float8_e4m3fn's largest value
        state[key] = (state[key] / scale).to(torch.float8_e4m3fn)
        state[key.replace(".weight", ".weight_scale")] = scale
        layers[key.removesuffix(".weight")] = {"format": "float8_e4m3fn"}
    state, _ = comfy.utils.convert_old_quants(
        state, metadata={"_quantization_metadata": json.dumps({"layers": layers})})
    config = _sdxl_config()
    config.custom_operations = comfy.ops.mixed_precision_ops(
        {}, torch.float32, disabled={"float8_e4m3fn"})
    model = config.get_model({})
    model.load_state_dict(state, strict=True)
    gen = torch.Generator().manual_seed(seed + 11)
    for name, module in model.named_modules():
        if smoothed and name.endswith("attn1.to_v"):
            module.pre_quant_scale = torch.nn.Parameter(
                1 + torch.rand(module.in_features, generator=gen), requires_grad=False)
    patcher = _patcher(model)
    # load now, outside inference mode: moving quantised parameters inside it fails in 0.33
    comfy.model_management.load_models_gpu([patcher])
    return patcher


def tiny_sd3(seed: int = 0, x_block_self_attn_layers=()):
    """A ModelPatcher around a tiny ``model_base.SD3`` (flow, shift 3) with 2 joint blocks."""
    import comfy.supported_models

    unet = dict(SD3_MMDIT, x_block_self_attn_layers=list(x_block_self_attn_layers))
    config = comfy.supported_models.SD3(unet)
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    init_weights(model, seed)
    return _patcher(model)


def tiny_sd15(seed: int = 0):
    """A ModelPatcher around a tiny ``model_base.BaseModel`` (SD1.x kind, EPS)."""
    import comfy.supported_models

    config = comfy.supported_models.SD15(dict(SD15_UNET))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    init_weights(model, seed)
    return _patcher(model)


def tiny_flux(seed: int = 0):
    """A ModelPatcher around a tiny ``model_base.Flux`` (one double and one single block)."""
    import comfy.supported_models

    config = comfy.supported_models.Flux(_for_this_host(FLUX))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    init_weights(model, seed)
    return _patcher(model)


def sdxl_conditioning(seed: int = 1, batch: int = 1):
    gen = torch.Generator().manual_seed(seed)
    extra = {"pooled_output": torch.randn(batch, 1280, generator=gen), "width": 128, "height": 128}
    return [[torch.randn(batch, 77, 64, generator=gen), extra]]


def sd15_conditioning(seed: int = 1, batch: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, 77, 768, generator=gen), {}]]


def sd3_conditioning(seed: int = 1, batch: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, 154, 64, generator=gen),
             {"pooled_output": torch.randn(batch, 64, generator=gen)}]]


def sample(patcher, positive, negative, *, latent_channels: int, batch: int = 1, size: int = 16,
           steps: int = 2, cfg: float = 2.0, seed: int = 0, sampler: str = "euler"):
    """Real ComfyUI sampling (comfy.sample.sample) under inference mode, like the server."""
    import comfy.sample

    latent = torch.zeros(batch, latent_channels, size, size)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return comfy.sample.sample(
            patcher, noise, steps, cfg, sampler, "normal", positive, negative, latent,
            seed=seed, disable_pbar=True,
        )


def sample_sdxl(patcher, **kw):
    batch = kw.pop("batch", 1)
    return sample(patcher, sdxl_conditioning(1, batch), sdxl_conditioning(2, batch),
                  latent_channels=4, batch=batch, **kw)


def sample_sd15(patcher, **kw):
    batch = kw.pop("batch", 1)
    return sample(patcher, sd15_conditioning(1, batch), sd15_conditioning(2, batch),
                  latent_channels=4, batch=batch, **kw)


def sample_sd3(patcher, **kw):
    batch = kw.pop("batch", 1)
    return sample(patcher, sd3_conditioning(1, batch), sd3_conditioning(2, batch),
                  latent_channels=16, batch=batch, **kw)


def write_checkpoint(patcher, latent_channels: int, path, seed: int = 0) -> None:
    """A tiny model's diffusion weights plus a random TAESD VAE as one .safetensors checkpoint
    (no text encoder: the end-to-end tier's conditioning comes from a test node)."""
    import comfy.taesd.taesd
    from safetensors.torch import save_file

    state = {f"model.{k}": v.contiguous() for k, v in patcher.model.state_dict().items()
             if k.startswith("diffusion_model.")}
    vae = comfy.taesd.taesd.TAESD(latent_channels=latent_channels)
    init_weights(vae, seed + 1)  # comfy.ops layers start uninitialised
    with torch.no_grad():
        vae.vae_scale.fill_(1.0)
        vae.vae_shift.fill_(0.0)
    state |= {f"first_stage_model.{k}": v.contiguous() for k, v in vae.state_dict().items()}
    save_file(state, str(path))


def write_tiny_sd3_checkpoint(path, seed: int = 0) -> None:
    """The tiny MMDiT, which CheckpointLoaderSimple detects as SD3 as it is."""
    write_checkpoint(tiny_sd3(seed), 16, path, seed)


def register_tiny_sdxl_detection() -> None:
    """Let this process's checkpoint detection load the tiny SDXL UNet as ``model_base.SDXL``
    (idempotent; test set-up only)."""
    import comfy.supported_models

    if any(getattr(m, "hc_tiny_sdxl", False) for m in comfy.supported_models.models):
        return

    class TinySDXLConfig(comfy.supported_models.SDXL):
        hc_tiny_sdxl = True
        unet_config = dict(TINY_SDXL_DETECTED)
        # BASE forces 64 channels per head; the 32-128 channel levels need 16
        unet_extra_config = {"num_heads": -1, "num_head_channels": 16}

    comfy.supported_models.models.insert(0, TinySDXLConfig)


def write_tiny_sdxl_checkpoint(path, seed: int = 0) -> None:
    """The tiny SDXL UNet; loading it needs ``register_tiny_sdxl_detection()`` first."""
    write_checkpoint(tiny_sdxl(seed), 4, path, seed)


# --- Flux, Chroma, Qwen-Image, SD3.5 at tiny widths; families the pack refuses ----------------
# Head dim 128 and RoPE axes (16, 56, 56) as in the real Flux, Chroma and Qwen-Image; two heads.

FLUX_DEV = dict(
    image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32,
    hidden_size=256, mlp_ratio=2.0, num_heads=2, depth=3, depth_single_blocks=4,
    axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True,
)

# Flux.2 (hosts newer than 0.3.64): as 0.33's model detection configures it (four RoPE axes,
# shared modulation, gated-SiLU MLPs, no biases, one token per latent pixel, reference images
# by index), at tiny width; head dim 128 with two heads.
FLUX2 = dict(
    image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None, context_in_dim=32,
    hidden_size=256, mlp_ratio=3.0, num_heads=2, depth=3, depth_single_blocks=4,
    axes_dim=[32, 32, 32, 32], theta=2000, patch_size=1, qkv_bias=False, guidance_embed=True,
    global_modulation=True, mlp_silu_act=True, ops_bias=False, default_ref_method="index",
    ref_index_scale=10.0, txt_ids_dims=[3],
)

CHROMA = dict(
    image_model="chroma", in_channels=64, out_channels=64, context_in_dim=32, hidden_size=256,
    mlp_ratio=2.0, num_heads=2, depth=2, depth_single_blocks=4, axes_dim=[16, 56, 56],
    theta=10000, patch_size=2, qkv_bias=True, in_dim=64, out_dim=256, hidden_dim=64, n_layers=2,
)

# Pixel space: 3 channels, 16 x 16 pixel patches, a small NeRF head
CHROMA_RADIANCE = dict(
    CHROMA, image_model="chroma_radiance", in_channels=3, out_channels=3, patch_size=16,
    nerf_hidden_size=16, nerf_mlp_ratio=2, nerf_depth=1, nerf_max_freqs=4, nerf_tile_size=0,
    nerf_final_head_type="linear", nerf_embedder_dtype=None,
)

QWEN_IMAGE = dict(
    image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=6,
    attention_head_dim=128, num_attention_heads=2, joint_attention_dim=32,
    axes_dims_rope=(16, 56, 56),
)

# Lumina 2 (NextDiT) at tiny width: head dim 128, its grouped keys (2 query heads over 1 key
# head), two refiner blocks per part as the real models, qk-norm, RoPE over three axes.
LUMINA2 = dict(
    image_model="lumina2", patch_size=2, in_channels=16, dim=256, n_layers=4,
    n_refiner_layers=2, n_heads=2, n_kv_heads=1, multiple_of=16, ffn_dim_multiplier=None,
    norm_eps=1e-5, qk_norm=True, cap_feat_dim=32, axes_dims=[32, 48, 48],
    axes_lens=[300, 512, 512],
)
# Z-Image: no grouping, its modulation, timestep scale and RoPE theta, and the text and image
# each padded to a multiple of 32 tokens (newer hosts only: 0.3.64 predates it)
Z_IMAGE = dict(LUMINA2, n_kv_heads=2, z_image_modulation=True, time_scale=1000.0,
               rope_theta=256.0, pad_tokens_multiple=32)

# HiDream (I1) as ComfyUI's model detection configures it, at tiny width: head dim 128, RoPE
# over (64, 32, 32) of it, mixture-of-experts feed-forwards (4 routed, 2 active), 2 double and
# 4 single blocks (16 and 32 in the real model), each block fed one of 4 Llama layers (32)
HIDREAM = dict(
    image_model="hidream", attention_head_dim=128, axes_dims_rope=[64, 32, 32],
    caption_channels=[32, 32], max_resolution=[128, 128], in_channels=16, out_channels=16,
    num_attention_heads=2, num_routed_experts=4, num_activated_experts=2, num_layers=2,
    num_single_layers=4, patch_size=2, text_emb_dim=32,
)
HIDREAM_LLAMA_LAYERS = 4

# AuraFlow (v0.3, Pony V7) at tiny width: its real head width 256 (2 heads), 8 register tokens
# before the text, 2 double and 4 single blocks (4 and 32 in the real model)
AURAFLOW = dict(cond_seq_dim=32, max_seq=1024, n_double_layers=2, n_layers=6, dim=512,
                n_heads=2, global_conddim=512)

# Krea 2 (newer hosts) at tiny width: head dim 128, 2 query heads over 1 key head, 4 blocks (28
# in the real model), its text-fusion transformer over 3 text-encoder layers of 32 channels
KREA2 = dict(image_model="krea2", features=256, channels=16, patch=2, layers=4, heads=2,
             kvheads=1, txtlayers=3, txtdim=32, txtheads=2, txtkvheads=2)
NO_KREA2 = "this host has no Krea 2 (ComfyUI 0.3.64 predates it; 0.33.0 builds it)"

# Mage-Flow (newer hosts): Qwen-Image's blocks at tiny width (head dim 128, 2 heads), 4 of them
# (12 in the real model), on a Flux.2 latent with one token per latent pixel
MAGE_FLOW = dict(image_model="mage_flow", in_channels=128, num_layers=4, attention_head_dim=128,
                 num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(16, 56, 56))
NO_MAGE_FLOW = "this host has no Mage-Flow (ComfyUI 0.3.64 predates it; 0.33.0 builds it)"

# Kandinsky 5 Image (Lite; newer hosts) at tiny width: head dim 128 (RoPE over 32 + 48 + 48), 2
# heads, 2 text blocks and 4 visual blocks (32 in the real model)
KANDINSKY5 = dict(image_model="kandinsky5", model_dim=256, visual_embed_dim=64, time_dim=64,
                  ff_dim=512, in_text_dim=32, in_text_dim2=32, axes_dims=(32, 48, 48),
                  rope_scale_factor=(1.0, 1.0, 1.0), num_text_blocks=2, num_visual_blocks=4)
NO_KANDINSKY5 = "this host has no Kandinsky 5 (ComfyUI 0.3.64 predates it; 0.33.0 builds it)"

# SD3.5 at their real block counts and qk-norm; width 64 * depth = 128 (2 heads of 64)
SD35 = {
    "large": dict(SD3_MMDIT, depth=2, num_blocks=38, qk_norm="rms"),
    "medium": dict(SD3_MMDIT, depth=2, num_blocks=24, qk_norm="rms",
                   x_block_self_attn_layers=list(range(13))),
}

UNSUPPORTED = {
    "wan": ("WAN21_T2V", dict(
        image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=16, in_dim=16,
        dim=64, ffn_dim=128, freq_dim=32, text_dim=32, out_dim=16, num_heads=2, num_layers=1,
        eps=1e-6)),
    "hunyuan_video": ("HunyuanVideo", dict(
        image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=32,
        context_in_dim=32, hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=1,
        depth_single_blocks=1, axes_dim=[8, 12, 12], theta=256, patch_size=[1, 2, 2],
        qkv_bias=True, guidance_embed=True, byt5=False, meanflow=False)),
}


# Fields that later ComfyUI releases added to these models' parameter classes without a default
# (0.33: Flux's and Chroma's txt_ids_dims, Chroma's vec_in_dim, Chroma Radiance's and
# HunyuanVideo's flags), at the values its model detection gives checkpoints of the models built
# here; a host whose class lacks one gets none.
NEWER_HOST_FIELDS = {
    "txt_ids_dims": [], "vec_in_dim": None, "use_x0": False, "use_sequential_txt_ids": False,
    "use_cond_type_embedding": False, "vision_in_dim": None, "meanflow_sum": False,
}
PARAMS_CLASSES = {
    "flux": ("comfy.ldm.flux.model", "FluxParams"),
    "chroma": ("comfy.ldm.chroma.model", "ChromaParams"),
    "chroma_radiance": ("comfy.ldm.chroma_radiance.model", "ChromaRadianceParams"),
    "hunyuan_video": ("comfy.ldm.hunyuan_video.model", "HunyuanVideoParams"),
}


def _for_this_host(unet: dict) -> dict:
    """``unet`` plus the fields this host's parameter class requires that it lacks."""
    import importlib

    where = PARAMS_CLASSES.get(unet.get("image_model"))
    if where is None:
        return dict(unet)
    params = getattr(importlib.import_module(where[0]), where[1])
    required = {f.name for f in dataclasses.fields(params)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    return {**{k: v for k, v in NEWER_HOST_FIELDS.items() if k in required}, **unet}


def _build(config_class: str, unet: dict, seed: int):
    import comfy.supported_models

    config = getattr(comfy.supported_models, config_class)(_for_this_host(unet))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    init_weights(model, seed)
    # Flux-style RMSNorms name their gain "scale", which init_weights sets like a bias (~0.02):
    # the qk-norm would then zero every logit. Gains near 1, as for the other norms.
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".scale") and p.ndim == 1:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
    return _patcher(model)


def tiny_flux_dev(seed: int = 0, depth: int = 3, single: int = 4, width: int = 256,
                  guidance: bool = True):
    """``model_base.Flux`` (dev: guidance-distilled; ``guidance=False``: schnell). ``width`` 64
    gives head dim 32 for the real block counts (19, 38) at little cost."""
    axes = [16, 56, 56] if width == 256 else [8, 12, 12]
    unet = dict(FLUX_DEV, depth=depth, depth_single_blocks=single, hidden_size=width,
                axes_dim=axes, guidance_embed=guidance)
    return _build("Flux" if guidance else "FluxSchnell", unet, seed)


NO_FLUX2 = "this host has no Flux.2 (ComfyUI 0.3.64 predates it; 0.33.0 builds it)"


def host_has_flux2() -> bool:
    import comfy.supported_models

    return hasattr(comfy.supported_models, "Flux2")


def tiny_flux2(seed: int = 0, depth: int = 3, single: int = 4, width: int = 256,
               guidance: bool = True):
    """``model_base.Flux2`` (``guidance``: a guidance input, as Flux.2 dev; without, real
    CFG). ``width`` 64 gives head dim 32 for the real block counts at little cost."""
    axes = [32] * 4 if width == 256 else [8] * 4
    unet = dict(FLUX2, depth=depth, depth_single_blocks=single, hidden_size=width,
                axes_dim=axes, guidance_embed=guidance)
    return _build("Flux2", unet, seed)


# Models newer ComfyUI builds as its Flux class, by their model config (real CFG, no pooled
# vector, text positions on two RoPE axes): LongCat-Image, and Ovis-Image (gated MLPs, a norm on
# the text)
FLUX_CLASS_MODELS = {
    "longcat": ("LongCatImage", dict(FLUX_DEV, guidance_embed=False, vec_in_dim=None,
                                     txt_ids_dims=[1, 2])),
    "ovis": ("Flux", dict(FLUX_DEV, guidance_embed=False, vec_in_dim=None, yak_mlp=True,
                          txt_norm=True, txt_ids_dims=[1, 2])),
}
NO_FLUX_CLASS_MODELS = ("this host builds neither LongCat-Image nor Ovis-Image (ComfyUI 0.3.64 "
                        "predates them; 0.33.0 builds both as Flux)")


def host_has_flux_class_models() -> bool:
    import comfy.supported_models
    from comfy.ldm.flux.model import FluxParams

    return hasattr(comfy.supported_models, "LongCatImage") and "yak_mlp" in {
        f.name for f in dataclasses.fields(FluxParams)}


def tiny_flux_class_model(name: str, seed: int = 0):
    """LongCat-Image or Ovis-Image at Flux dev's tiny size (``FLUX_CLASS_MODELS``)."""
    return _build(*FLUX_CLASS_MODELS[name], seed)


def tiny_chroma(seed: int = 0, radiance: bool = False):
    """``model_base.Chroma`` (or ChromaRadiance, pixel space) with 2 double and 4 single blocks."""
    if radiance:
        return _build("ChromaRadiance", CHROMA_RADIANCE, seed)
    return _build("Chroma", CHROMA, seed)


def tiny_qwen_image(seed: int = 0, layers: int = 6, width: int = 256):
    """``model_base.QwenImage`` with ``layers`` joint blocks (60 in the real model)."""
    unet = dict(QWEN_IMAGE, num_layers=layers, attention_head_dim=width // 2,
                axes_dims_rope=(16, 56, 56) if width == 256 else (8, 12, 12))
    return _build("QwenImage", unet, seed)


# Anima (newer hosts: Cosmos Predict2's MiniTrainDIT with an LLM adapter for its text), as
# 0.33's model detection configures it, at tiny width: head dim 128, 3-D RoPE, AdaLN-LoRA; the
# text context fed to it directly (32 channels), as when no token ids come with it
ANIMA = dict(
    image_model="anima", max_img_h=240, max_img_w=240, max_frames=128, in_channels=16,
    out_channels=16, patch_spatial=2, patch_temporal=1, model_channels=256,
    concat_padding_mask=True, crossattn_emb_channels=32, pos_emb_cls="rope3d",
    pos_emb_learnable=True, pos_emb_interpolation="crop", min_fps=1, max_fps=30,
    use_adaln_lora=True, adaln_lora_dim=64, num_blocks=4, num_heads=2,
    extra_per_block_abs_pos_emb=False, rope_h_extrapolation_ratio=4.0,
    rope_w_extrapolation_ratio=4.0, rope_t_extrapolation_ratio=1.0,
)
NO_ANIMA = "this host has no Anima (ComfyUI 0.3.64 predates it; 0.33.0 builds it)"


def host_has_anima() -> bool:
    import comfy.supported_models

    return hasattr(comfy.supported_models, "Anima")


def tiny_anima(seed: int = 0, layers: int = 4):
    """``model_base.Anima`` with ``layers`` blocks."""
    return _build("Anima", dict(ANIMA, num_blocks=layers), seed)


NO_Z_IMAGE = "this host has no Z-Image (ComfyUI 0.3.64 predates it; 0.33.0 builds it)"


def host_has_z_image() -> bool:
    import comfy.supported_models

    return hasattr(comfy.supported_models, "ZImage")


def tiny_lumina2(seed: int = 0, layers: int = 4, width: int = 256, newbie: bool = False):
    """``model_base.Lumina2`` with ``layers`` main blocks (26 in the real model). ``width`` 64
    gives head dim 32 at little cost. ``newbie``: NewBie's pooled CLIP text projection."""
    axes = [32, 48, 48] if width == 256 else [8, 12, 12]
    unet = dict(LUMINA2, n_layers=layers, dim=width, axes_dims=axes)
    if newbie:
        unet["clip_text_dim"] = 32
    return _build("Lumina2", unet, seed)


def tiny_z_image(seed: int = 0, layers: int = 4, width: int = 256):
    """``model_base.Lumina2`` as ComfyUI builds Z-Image (its own config class; 30 blocks in
    the real model)."""
    axes = [32, 48, 48] if width == 256 else [8, 12, 12]
    return _build("ZImage", dict(Z_IMAGE, n_layers=layers, dim=width, axes_dims=axes), seed)


def tiny_z_image_pixel(seed: int = 0):
    """Z-Image's pixel-space variant (``NextDiTPixelSpace``: RGB in 16 x 16 pixel patches and
    a small MLP decoder in place of the final layer), 4 blocks."""
    unet = dict(Z_IMAGE, image_model="zimage_pixel", in_channels=3, patch_size=16,
                decoder_hidden_size=64, decoder_num_res_blocks=1, decoder_max_freqs=4)
    return _build("ZImagePixelSpace", unet, seed)


def tiny_hidream(seed: int = 0, double: int = 2, single: int = 4, head_dim: int = 128,
                 experts: int = 4):
    """``model_base.HiDream`` with ``double`` and ``single`` blocks. ``head_dim`` 32 gives the
    real block counts (16, 32) at little cost; ``experts`` 0: plain feed-forwards (the routed
    experts' data-dependent indexing breaks a compiled graph, as on the real model)."""
    blocks = double + single
    axes = [64, 32, 32] if head_dim == 128 else [16, 8, 8]
    unet = dict(HIDREAM, num_layers=double, num_single_layers=single, attention_head_dim=head_dim,
                axes_dims_rope=axes, num_routed_experts=experts,
                llama_layers=[min(i, HIDREAM_LLAMA_LAYERS - 1) for i in range(blocks)])
    return _build("HiDream", unet, seed)


def tiny_auraflow(seed: int = 0, double: int = 2, single: int = 4, width: int = 512):
    """``model_base.AuraFlow`` with ``double`` and ``single`` blocks; ``width`` 64 (head dim
    32) gives the real block counts (4, 32) at little cost."""
    unet = dict(AURAFLOW, n_double_layers=double, n_layers=double + single, dim=width,
                global_conddim=width)
    return _build("AuraFlow", unet, seed)


def host_has_krea2() -> bool:
    import comfy.supported_models

    return hasattr(comfy.supported_models, "Krea2")


def tiny_krea2(seed: int = 0, layers: int = 4, width: int = 256):
    """``model_base.Krea2`` with ``layers`` blocks; ``width`` 64 (head dim 32 over 2 heads,
    1 key head) gives the real block count at little cost."""
    return _build("Krea2", dict(KREA2, layers=layers, features=width), seed)


def krea2_conditioning(seed: int = 1, batch: int = 1, tokens: int = 8, reference=None):
    """Krea 2's text: every text-encoder layer's hidden states side by side [B, tokens,
    layers x 32]; ``reference``: reference latents (ReferenceLatent)."""
    gen = torch.Generator().manual_seed(seed)
    extra = {} if reference is None else {"reference_latents": list(reference)}
    context = torch.randn(batch, tokens, KREA2["txtlayers"] * KREA2["txtdim"], generator=gen)
    return [[context, extra]]


def host_has_mage_flow() -> bool:
    import comfy.supported_models

    return hasattr(comfy.supported_models, "MageFlow")


def tiny_mage_flow(seed: int = 0, layers: int = 4, width: int = 256):
    """``model_base.MageFlow`` with ``layers`` blocks; ``width`` 64 (head dim 32) gives the
    real block count at little cost."""
    unet = dict(MAGE_FLOW, num_layers=layers, attention_head_dim=width // 2,
                axes_dims_rope=(16, 56, 56) if width == 256 else (8, 12, 12))
    return _build("MageFlow", unet, seed)


def host_has_kandinsky5() -> bool:
    import comfy.supported_models

    return hasattr(comfy.supported_models, "Kandinsky5Image")


def tiny_kandinsky5(seed: int = 0, blocks: int = 4, video: bool = False):
    """``model_base.Kandinsky5Image`` with ``blocks`` visual blocks (``video``: the video
    models' ``Kandinsky5``, which the pack refuses)."""
    return _build("Kandinsky5" if video else "Kandinsky5Image",
                  dict(KANDINSKY5, num_visual_blocks=blocks), seed)


def tiny_sd35(variant: str, seed: int = 0):
    """``model_base.SD3`` shaped as SD3.5 Large (38 blocks) or Medium (24, image self-attention
    in blocks 0-12), with rms qk-norm."""
    return _build("SD3", SD35[variant], seed)


def tiny_unsupported(name: str, seed: int = 0):
    """A model of a family the pack refuses (Wan, HunyuanVideo)."""
    config_class, unet = UNSUPPORTED[name]
    return _build(config_class, unet, seed)


def flux_conditioning(seed: int = 1, batch: int = 1, tokens: int = 8, guidance: float = 3.5,
                      reference=None):
    """Flux text conditioning; ``reference``: Kontext reference latents (ReferenceLatent)."""
    gen = torch.Generator().manual_seed(seed)
    extra = {"pooled_output": torch.randn(batch, 32, generator=gen), "guidance": guidance}
    if reference is not None:
        extra["reference_latents"] = list(reference)
    return [[torch.randn(batch, tokens, 32, generator=gen), extra]]


def qwen_image_conditioning(seed: int = 1, batch: int = 1, tokens: int = 8, reference=None):
    gen = torch.Generator().manual_seed(seed)
    extra = {} if reference is None else {"reference_latents": list(reference)}
    return [[torch.randn(batch, tokens, 32, generator=gen), extra]]


def hidream_conditioning(seed: int = 1, batch: int = 1, tokens: int = 8, reference=None):
    """HiDream's text: T5 as the context, the pooled CLIP embeddings, and the hidden states of
    every Llama layer [B, layers, tokens, C]; ``reference``: HiDream-E1's input image latent
    (concat_latent_image, as InstructPixToPixConditioning sets it)."""
    gen = torch.Generator().manual_seed(seed)
    extra = {"pooled_output": torch.randn(batch, 32, generator=gen),
             "conditioning_llama3": torch.randn(batch, HIDREAM_LLAMA_LAYERS, tokens, 32,
                                                generator=gen)}
    if reference is not None:
        extra["concat_latent_image"] = reference
    return [[torch.randn(batch, tokens, 32, generator=gen), extra]]


def sample_latent(patcher, positive, negative, latent: torch.Tensor, *, steps: int = 2,
                  cfg: float = 2.0, seed: int = 0, sampler: str = "euler"):
    """``sample`` for a latent of any shape (Qwen-Image's [B, 16, 1, H, W], pixels)."""
    import comfy.sample

    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return comfy.sample.sample(
            patcher, noise, steps, cfg, sampler, "normal", positive, negative, latent,
            seed=seed, disable_pbar=True,
        )


def sample_flux(patcher, batch: int = 1, size: int = 16, reference=None, **kw):
    """Flux dev and Chroma share a latent (16 channels); guidance-distilled dev runs at cfg 1."""
    return sample_latent(patcher, flux_conditioning(1, batch, reference=reference),
                         flux_conditioning(2, batch, reference=reference),
                         torch.zeros(batch, 16, size, size), **kw)


def sample_flux2(patcher, batch: int = 1, size: int = 8, reference=None, **kw):
    """Flux.2's latent: 128 channels, one token per latent pixel; the host pads the text
    to 512 tokens."""
    return sample_latent(patcher, flux_conditioning(1, batch, reference=reference),
                         flux_conditioning(2, batch, reference=reference),
                         torch.zeros(batch, 128, size, size), **kw)


def sample_chroma_radiance(patcher, batch: int = 1, size: int = 64, **kw):
    return sample_latent(patcher, flux_conditioning(1, batch), flux_conditioning(2, batch),
                         torch.zeros(batch, 3, size, size), **kw)


def sample_qwen_image(patcher, batch: int = 1, size: int = 16, reference=None, **kw):
    """A 5-D latent, as KSampler makes it (fix_empty_latent_channels, Wan 2.1 latent format)."""
    return sample_latent(patcher, qwen_image_conditioning(1, batch, reference=reference),
                         qwen_image_conditioning(2, batch, reference=reference),
                         torch.zeros(batch, 16, 1, size, size), **kw)
