"""Patch a model with skew circulation: the handler behind Skew and Adaptive Circulation."""

from __future__ import annotations

import torch

from ..hopfield import CirculationSettings, circulate_input_space, circulate_value_space
from ..hopfield.circulation import needs_baseline
from .block_input import install_block_input_stash, take_block_input
from .call import AttentionCall, Steering
from .family import layer_map_of, model_family, unet_attn1
from .layers import select_layers
from .override import HostBaseline, install_attention_hook, record_steering
from .schedule import in_window, sigma_window

BRANCHES = ("both", "cond", "uncond")
SPACES = ("value", "input")


def active_rows(call: AttentionCall, branch: str) -> torch.Tensor | None:
    """Bool [B] of the samples to steer; None means all of them."""
    if branch == "both":
        return None
    wanted = 0 if branch == "cond" else 1
    return call.branch_of_rows() == wanted


def patch_circulation(
    model_patcher,
    settings: CirculationSettings,
    *,
    start_percent: float = 0.0,
    end_percent: float = 1.0,
    layers: str = "all",
    branch: str = "both",
    space: str = "value",
):
    """A clone of ``model_patcher`` whose selected self-attention layers are steered."""
    if branch not in BRANCHES:
        raise ValueError(f"branch must be one of {BRANCHES}, got {branch!r}")
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    family = model_family(model_patcher)
    if space == "input" and family != "sdxl":
        raise ValueError(
            "space='input' (the authors' input-space formulation) exists for SDXL self-attention "
            "only; SD3's joint attention projects text and image with different W_v. Use 'value'."
        )
    m = model_patcher.clone()
    sigma_start, sigma_end = sigma_window(m, start_percent, end_percent)
    stash = None
    if space == "input" and not settings.is_identity:
        stash = install_block_input_stash(m)

    selected = select_layers(layers, layer_map_of(m))

    def steer(call: AttentionCall, baseline: HostBaseline) -> torch.Tensor | None:
        if settings.is_identity or call.layer.index not in selected:
            return None
        if call.sigma is not None and not in_window(call.sigma, sigma_start, sigma_end):
            return None
        active = active_rows(call, branch)
        if space == "value":
            wanted = baseline.chained or needs_baseline(call.q, call.k, call.v, settings, active)
            base = baseline.heads(call.heads) if wanted else None  # fused: one pass, no host call
            result = circulate_value_space(call.q, call.k, call.v, base, settings, active)
        else:
            result = _steer_input_space(m, stash, call, baseline.heads(call.heads), settings,
                                        active)
        record_steering(call, Steering(settings, space, result.eta_bar, active))
        return result.out

    install_attention_hook(m, steer)
    return m


def _steer_input_space(model_patcher, stash, call, base, settings, active):
    options = call.transformer_options
    x = take_block_input(stash, options)
    attn1 = unet_attn1(model_patcher, options["block"], options.get("block_index", 0))
    w_v, b_v = _effective_weight(attn1.to_v, x)
    return circulate_input_space(call.q, call.k, x, w_v, b_v, base, settings, active)


def _effective_weight(linear, like: torch.Tensor):
    """W_v as the layer really applies it (fp8, low-VRAM offload and LoRA patches included)."""
    import comfy.ops

    if hasattr(linear, "weight_function"):  # every comfy.ops layer
        weight, bias = comfy.ops.cast_bias_weight(linear, like)[:2]
        return weight, bias
    return linear.weight.to(like), (linear.bias.to(like) if linear.bias is not None else None)
