"""The pack's words, defined once and typed: what the nodes offer, the features check and the
hooks pass around. Node widgets keep their public input names ("space" on the circulation nodes,
"basis" on the probe); both choose a ``FeatureSpace``.
"""

from __future__ import annotations

from typing import Literal, get_args

# Which CFG branch a circulation node steers ("both" as in the paper).
SteerBranch = Literal["both", "cond", "uncond"]
STEER_BRANCHES: tuple[SteerBranch, ...] = get_args(SteerBranch)

# Which CFG branch the Stability Probe records ("cond" as in the paper).
ProbeBranch = Literal["cond", "uncond", "both"]
PROBE_BRANCHES: tuple[ProbeBranch, ...] = get_args(ProbeBranch)

# ComfyUI's ``cond_or_uncond`` entries: one per batch chunk of a model call.
CfgLabel = Literal[0, 1]
COND: CfgLabel = 0
UNCOND: CfgLabel = 1
CFG_LABEL: dict[str, CfgLabel] = {"cond": COND, "uncond": UNCOND}
BRANCH_NAME: dict[int, str] = {COND: "cond", UNCOND: "uncond"}

# The retrieval a feature works on: the attention output's d value channels per head, or the
# paper's retrieval over the block input X (C channels; UNet self-attention only).
FeatureSpace = Literal["value", "input"]
FEATURE_SPACES: tuple[FeatureSpace, ...] = get_args(FeatureSpace)

# How a placed self-attention call relates to the sequence: UNet attn1 over image tokens, a
# joint (double-stream) block over [text; image], a single-stream block's self-attention over
# the same concatenated sequence, or SD3.5-M's extra image-only self-attention.
LayerKind = Literal["self", "joint", "single", "image_self"]

# The Stability Probe's measures, in the order of every saved and reported array.
Measure = Literal["energy", "instability", "align", "eta"]
MEASURES: tuple[Measure, ...] = get_args(Measure)


def check_choice(name: str, value, choices: tuple) -> None:
    """The one style in which settings validate a choice: a ValueError naming the options."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
