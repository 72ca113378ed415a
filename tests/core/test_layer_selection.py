"""The `layers` setting and the schedule helpers: pure Python, no host needed."""

from __future__ import annotations

import pytest
from hopfield_circulation.families.mmdit import mmdit_layer_map as sd3_layer_map
from hopfield_circulation.families.unet import unet_layer_map
from hopfield_circulation.hook.layers import select_layers
from hopfield_circulation.hook.schedule import (
    UNREAD,
    StepInfo,
    in_window,
    locate_step,
    window_bounds,
    within,
)

SDXL = unet_layer_map(
    [("input", 4, 2), ("input", 5, 2), ("input", 7, 10), ("input", 8, 10), ("middle", 0, 10)]
    + [("output", i, 10) for i in range(3)] + [("output", i, 2) for i in range(3, 6)]
)


def test_sdxl_groups_follow_the_papers_ranges():
    assert len(SDXL.layers) == 70  # 70 BasicTransformerBlocks, attn1 of each
    assert [layer.index for layer in SDXL.layers] == list(range(0, 140, 2))
    assert select_layers("down", SDXL) == frozenset(range(0, 48, 2))
    assert select_layers("mid", SDXL) == frozenset(range(48, 68, 2))
    assert select_layers("up", SDXL) == frozenset(range(68, 140, 2))
    assert select_layers("all", SDXL) == select_layers("0-139", SDXL)
    assert select_layers("down, up", SDXL) == select_layers("0-47, 68-139", SDXL)
    assert select_layers(" 4 , 10-12 ", SDXL) == {4, 10, 12}


def test_sd3_blocks_and_thirds():
    m = sd3_layer_map(24)
    assert select_layers("early", m) == frozenset(range(8))
    assert select_layers("middle", m) == frozenset(range(8, 16))
    assert select_layers("late", m) == frozenset(range(16, 24))
    assert select_layers("0-3, 23", m) == {0, 1, 2, 3, 23}
    assert {layer.group for layer in sd3_layer_map(2).layers} == {"early", "middle"}


@pytest.mark.parametrize("spec, message", [
    ("", "empty"), ("  , ", "empty"), ("down;up", "cannot read"), ("9-3", "backwards"),
    ("140", "past the last"), ("1, 3", "no self-attention"), ("early", "cannot read"),
])
def test_bad_selections_say_why(spec, message):
    with pytest.raises(ValueError, match=message):
        select_layers(spec, SDXL)


def test_step_location_and_window():
    schedule = [14.6, 7.0, 3.0, 0.5, 0.0]
    assert locate_step(7.0, schedule).step == 1
    assert locate_step(7.0 * (1 + 1e-6), schedule).step == 1
    assert locate_step(5.0, schedule).step == 1  # a substep between 7 and 3
    assert locate_step(3.0, schedule).percent == 0.5
    assert locate_step(3.0, None).step is None
    assert in_window(3.0, 999999999.9, 0.0) and not in_window(3.0, 2.0, 0.0)
    assert not in_window(3.0, 0.0, 0.0) and in_window(1.0, 1.0, 0.5)


def test_a_graph_is_handed_the_window_decisions_and_nothing_that_differs_per_call():
    """What SD3's checkpointed joint blocks get in a compiled graph (torch 2.11 guards all of
    it): equal for two model calls in the same windows, answering every window as before."""
    window, other = window_bounds(1.0, 0.5), window_bounds(9.0, 2.0)
    calls = [StepInfo(sigma, step, step / 4, call, {window: within(sigma, window),
                                                    other: within(sigma, other)})
             for call, (step, sigma) in enumerate(((1, 7.0), (2, 3.0), (3, 0.7), (4, 0.6)))]
    seen = [info.for_graph() for info in calls]
    assert seen[0] == seen[1] != seen[2] == seen[3]
    for info, graph in zip(calls, seen, strict=True):
        assert all(graph.in_window(w) == info.in_window(w) for w in (window, other))
    # no window decided: the sigma, as before (in_window falls back to it)
    read = StepInfo(3.0, 2, 0.5, 7)
    assert read.for_graph() == StepInfo(3.0, None, None) and UNREAD.for_graph() == UNREAD
