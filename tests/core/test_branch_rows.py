"""Which rows of an attention call a branch setting steers: pure torch, no host needed."""

from __future__ import annotations

import pytest
import torch
from hopfield_circulation.circulation.branches import (
    RowMasks,
    active_rows,
    steered_run,
    steers_branch,
)
from hopfield_circulation.hook.call import AttentionCall
from hopfield_circulation.hook.schedule import UNREAD


def call_of(batch: int, cond_or_uncond: list[int]) -> AttentionCall:
    q = torch.zeros(batch, 2, 4, 8)
    return AttentionCall(q=q, k=q, v=q, heads=2, layer=None, step_info=UNREAD,
                         cond_or_uncond=cond_or_uncond)


@pytest.mark.parametrize("batch, chunks, branch, expected", [
    (2, [1, 0], "cond", [False, True]),  # ComfyUI batches uncond first
    (2, [1, 0], "uncond", [True, False]),
    (4, [1, 0], "cond", [False, False, True, True]),  # batch 2 per branch
    (6, [0, 1, 0], "uncond", [False, False, True, True, False, False]),  # area conds
])
def test_mixed_calls_get_a_row_mask(batch, chunks, branch, expected):
    mask = active_rows(call_of(batch, chunks), branch)
    assert mask.dtype == torch.bool and mask.tolist() == expected


@pytest.mark.parametrize("batch, chunks, branch", [
    (2, [1, 0], "both"), (1, [0], "cond"), (2, [1], "uncond"), (1, [], "cond"),
])
def test_whole_calls_need_no_mask(batch, chunks, branch):
    assert active_rows(call_of(batch, chunks), branch) is None


def test_calls_without_the_branch_are_skipped():
    assert not steers_branch(call_of(1, [0]), "uncond")  # cfg = 1 runs cond alone
    assert not steers_branch(call_of(1, [1]), "cond")  # a split uncond call
    assert steers_branch(call_of(2, [1, 0]), "cond") and steers_branch(call_of(1, [1]), "both")


@pytest.mark.parametrize("batch, chunks, branch, expected", [
    (2, [1, 0], "cond", slice(1, 2)),
    (4, [1, 0], "uncond", slice(0, 2)),
    (6, [0, 1, 0], "uncond", slice(2, 4)),
    (6, [0, 1, 0], "cond", None),  # two runs: the row mask is used instead
])
def test_a_branch_in_one_run_of_rows_is_a_slice(batch, chunks, branch, expected):
    assert steered_run(call_of(batch, chunks), branch) == expected


def test_row_masks_are_made_once_per_layout():
    masks = RowMasks("cond")
    first, run = masks(call_of(4, [1, 0]))
    again, _ = masks(call_of(4, [1, 0]))
    assert again is first and run == slice(2, 4) and first.tolist() == [False, False, True, True]
    assert masks(call_of(2, [1, 0]))[0] is not first  # another batch size, another mask
    assert RowMasks("both")(call_of(4, [1, 0])) == (None, None)
