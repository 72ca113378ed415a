"""The `layers` setting and the schedule helpers: pure Python, no host needed."""

from __future__ import annotations

import pytest
from hopfield_circulation.families.mmdit import mmdit_layer_map as sd3_layer_map
from hopfield_circulation.families.unet import unet_layer_map
from hopfield_circulation.hook.layers import select_layers
from hopfield_circulation.hook.schedule import in_window, locate_step

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


def test_the_model_call_under_way_is_the_innermost():
    """What the hooks read of a model call (schedule.ModelCall): the innermost one under way,
    none outside, and popped even when the call raises."""
    from hopfield_circulation.hook.schedule import (
        UNREAD,
        ModelCall,
        StepInfo,
        running,
        running_call,
        running_step,
    )

    outer, inner = ModelCall(StepInfo(3.0, 1, 0.5, 7), (1, 0)), ModelCall(patch=4)
    assert running_call() is None and running_step() is UNREAD
    with running(outer):
        assert running_call() is outer and running_step().step == 1
        with pytest.raises(ValueError), running(inner):
            assert running_call() is inner and running_step() is UNREAD
            raise ValueError
        assert running_call() is outer
    assert running_call() is None
