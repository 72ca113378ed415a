"""Test-only ComfyUI nodes for the end-to-end tier (never part of the shipped pack).

The tiny test checkpoints carry no text encoder, so conditioning comes from this node.
"""

import torch


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
        return ([[cond, {"pooled_output": torch.randn(1, pooled, generator=gen)}]],)


NODE_CLASS_MAPPINGS = {"HCTestRandomConditioning": HCTestRandomConditioning}
