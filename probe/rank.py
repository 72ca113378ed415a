"""Order the samples of a probed batch by their Align_X: the Stability Rank node's core.

Reads the same per-sample block means the Stability Report shows (summary.py), so a rank and a
report of one run always agree. The paper's stable samples have high Align_X (table 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..vocabulary import BRANCH_NAME, COND, MEASURES
from .registry import find_run, probe_state
from .summary import summarise

# The block choices, by position in a family's groups (+ "all"): Down/Mid/Up on UNets, the
# early/middle/late thirds on DiTs.
BLOCKS = ("all", "down / early", "mid / middle", "up / late")
ORDERS = ("most stable first", "least stable first")


@dataclass
class Ranking:
    order: list[int]  # batch rows, best first in the chosen order
    scores: list[float]  # Align_X of each batch row (NaN: not recorded)
    block: str  # the family's name for the chosen block
    branch: str  # the CFG branch the scores come from

    def text(self, k: int) -> str:
        lines = [f"Align_X, {self.block} blocks, {self.branch} branch; kept: first {k}"]
        for place, row in enumerate(self.order):
            mark = "kept" if place < k else ""
            lines.append(f"{place + 1:>3}. sample {row:<3} Align_X {self.scores[row]:.4f} {mark}")
        return "\n".join(lines)


def rank_samples(handle, latent: torch.Tensor, block: str = "all",
                 order: str = ORDERS[0]) -> Ranking:
    """The batch rows of the run behind ``latent`` ordered by Align_X of ``block``."""
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {list(BLOCKS)}, got {block!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {list(ORDERS)}, got {order!r}")
    summary = summarise(probe_state(handle), find_run(handle, latent))
    last = len(summary.groups) - 1  # "all" closes the groups
    group = last if block == "all" else BLOCKS.index(block) - 1
    if group > last or (group == last and block != "all"):
        raise ValueError(f"this model has no block '{block}' "
                         f"(its groups: {', '.join(summary.groups)})")
    branches = {branch for branch, _ in summary.sample_keys}
    branch = COND if COND in branches else min(branches)  # the paper's branch when recorded
    rows = {row: s for s, (b, row) in enumerate(summary.sample_keys) if b == branch}
    align = MEASURES.index("align")
    scores = [float(summary.group_values[rows[row], group, align]) for row in sorted(rows)]
    finite = [row for row in sorted(rows) if math.isfinite(scores[row])]
    ranked = sorted(finite, key=lambda row: scores[row], reverse=order == ORDERS[0])
    ranked += [row for row in sorted(rows) if row not in finite]  # unrecorded last
    return Ranking(ranked, scores, summary.groups[group], BRANCH_NAME[branch])
