"""Test-only ComfyUI nodes for the end-to-end tier (never part of the shipped pack).

The tiny test checkpoints carry no text encoder, so conditioning comes from a node here. Loading
this pack also teaches the test server's checkpoint detection the tiny SDXL UNet (ComfyUI only
recognises SDXL at full size); that registration lives in this test server only.
"""

import torch

# Detected config of tests/host/tiny_models.SDXL_UNET (the keys that tell it apart).
TINY_SDXL_UNET = {
    "model_channels": 32, "context_dim": 64, "adm_in_channels": 2816,
    "transformer_depth": [0, 1, 1], "transformer_depth_output": [0, 0, 1, 1, 1, 1],
    "transformer_depth_middle": 1, "use_linear_in_transformer": True,
    "use_temporal_attention": False,
}


def _register_tiny_sdxl() -> None:
    import comfy.supported_models

    if any(getattr(m, "hc_tiny", False) for m in comfy.supported_models.models):
        return

    class TinySDXLForTests(comfy.supported_models.SDXL):
        hc_tiny = True
        unet_config = dict(TINY_SDXL_UNET)
        # BASE forces 64 channels per head; 32-128 channel levels need 16
        unet_extra_config = {"num_heads": -1, "num_head_channels": 16}

    comfy.supported_models.models.insert(0, TinySDXLForTests)


_register_tiny_sdxl()


class HCTestRandomConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
                             "tokens": ("INT", {"default": 154, "min": 1, "max": 1024}),
                             "width": ("INT", {"default": 64, "min": 1, "max": 4096}),
                             "pooled": ("INT", {"default": 64, "min": 1, "max": 4096})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, seed, tokens, width, pooled):
        gen = torch.Generator().manual_seed(seed)
        cond = torch.randn(1, tokens, width, generator=gen)
        extra = {"pooled_output": torch.randn(1, pooled, generator=gen)}
        if pooled == 1280:  # SDXL's size conditioning (encode_adm reads these)
            extra |= {"width": 1024, "height": 1024}
        return ([[cond, extra]],)


NODE_CLASS_MAPPINGS = {"HCTestRandomConditioning": HCTestRandomConditioning}
