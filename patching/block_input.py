"""Capture the normed block input X of SDXL self-attention (for the paper's input space).

The attention override only receives q, k, v. An attn1_patch runs right before attn1 in the same
transformer block and sees X, so it leaves X where that call's hooks can find it. The stash is a
closure, not a dict in model_options: ComfyUI copies those on every model call.
"""

from __future__ import annotations


def block_key(options: dict) -> tuple:
    return tuple(options.get("block") or ()), options.get("block_index", 0)


def install_block_input_stash(model_patcher) -> dict:
    """Add the attn1_patch to ``model_patcher``; returns the stash it fills ({"key", "x"})."""
    stash: dict = {}

    def keep_block_input(n, context_attn1, value_attn1, extra_options, **kwargs):
        stash["key"] = block_key(extra_options)
        stash["x"] = n
        return n, context_attn1, value_attn1

    model_patcher.set_model_attn1_patch(keep_block_input)
    return stash


def take_block_input(stash: dict, options: dict):
    """X for the attention call described by ``options``; raises if it was not captured."""
    if stash.get("key") != block_key(options) or "x" not in stash:
        raise RuntimeError(
            "the block input of this attention layer was not captured (another node replaced "
            "attn1 here?); use the value space/basis instead"
        )
    return stash["x"]
