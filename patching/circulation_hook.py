"""Patch a model with skew circulation: the handler behind Skew and Adaptive Circulation."""

from __future__ import annotations

import torch

from ..hopfield import CirculationSettings, circulate_input_space, circulate_value_space
from ..hopfield.circulation import needs_baseline
from .block_input import block_key, effective_weight, take_block_input, unet_attn1_marker
from .call import AttentionCall, Steering
from .family import layer_map_of, model_family, unet_attn1_modules
from .layers import select_layers
from .override import HostBaseline, install_attention_hook, record_steering
from .schedule import in_window, sigma_window

BRANCHES = ("both", "cond", "uncond")
BRANCH_LABELS = {"cond": 0, "uncond": 1}  # ComfyUI's cond_or_uncond entries
SPACES = ("value", "input")


def active_rows(call: AttentionCall, branch: str) -> torch.Tensor | None:
    """Bool [B] of the samples to steer; None means all of them.

    The batch holds len(cond_or_uncond) equal chunks in that order. Built from fills on q's
    device: a tensor made from a Python list would be a host-to-device copy, which waits for
    the device inside every attention call.
    """
    wanted = BRANCH_LABELS.get(branch)
    chunks = call.cond_or_uncond or [0]
    if wanted is None or all(label == wanted for label in chunks):
        return None  # "both", or a call of the chosen branch alone (cfg = 1, split calls)
    per_chunk = call.batch // len(chunks)
    return torch.cat([
        torch.full((per_chunk,), label == wanted, dtype=torch.bool, device=call.q.device)
        for label in chunks
    ])


def steers_branch(call: AttentionCall, branch: str) -> bool:
    """Whether any chunk of this call belongs to the branch (cfg = 1 runs cond alone, and
    cond and uncond may come in separate calls): decided on the host, no work otherwise."""
    return branch == "both" or BRANCH_LABELS[branch] in call.cond_or_uncond


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
    selected = select_layers(layers, layer_map_of(m))
    input_space = None
    if space == "input" and not settings.is_identity:
        input_space = (unet_attn1_marker(m), unet_attn1_modules(m))

    def steer(call: AttentionCall, baseline: HostBaseline) -> torch.Tensor | None:
        if settings.is_identity or call.layer.index not in selected:
            return None
        if call.sigma is not None and not in_window(call.sigma, sigma_start, sigma_end):
            return None
        if not steers_branch(call, branch):
            return None
        active = active_rows(call, branch)
        if space == "value":
            wanted = baseline.chained or needs_baseline(call.q, call.k, call.v, settings, active)
            base = baseline.heads(call.heads) if wanted else None  # fused: one pass, no host call
            result = circulate_value_space(call.q, call.k, call.v, base, settings, active)
        else:
            result = _steer_input_space(input_space, call, baseline.heads(call.heads),
                                        settings, active)
        record_steering(call, Steering(settings, space, result.eta_bar, active))
        return result.out

    install_attention_hook(m, steer)
    return m


def _steer_input_space(input_space, call, base, settings, active):
    """The authors' formulation over attn1's input X, projected by the layer's own W_v."""
    marker, attn1_modules = input_space
    options = call.transformer_options
    x = take_block_input(marker, options)
    if x.shape[:2] != (call.batch, call.k.shape[-2]):
        raise RuntimeError(
            f"input space: attn1's input X {tuple(x.shape)} does not match its keys "
            f"{tuple(call.k.shape)} (another node changes attn1's values); use space='value'"
        )
    w_v, b_v = effective_weight(attn1_modules[block_key(options)].to_v, x)
    return circulate_input_space(call.q, call.k, x, w_v, b_v, base, settings, active)
