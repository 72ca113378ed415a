"""The Stability Report's views without ComfyUI: labelled heatmap tiles, the text and table,
and the saved file's permissions."""

from __future__ import annotations

import math
import os
import stat

import pytest
import torch
from hopfield_circulation.hopfield.heatmap import diverging_colors
from hopfield_circulation.probe import report as rp
from hopfield_circulation.probe.registry import ProbeRun, ProbeSettings, SeriesEntry
from hopfield_circulation.probe.report_file import save_report
from hopfield_circulation.probe.summary import Summary


def needs_pillow():
    pytest.importorskip("PIL", reason="Pillow (ComfyUI ships it) is not installed")


def summary(grid=(16, 16), empty_group="late") -> Summary:
    gen = torch.Generator().manual_seed(0)
    groups = ("early", "middle", "late", "all")
    values = torch.rand(2, 4, 4, generator=gen) - 0.5
    values[:, groups.index(empty_group)] = math.nan  # no block in that third
    maps = {g: torch.randn(2, *grid, generator=gen) * (i + 1)
            for i, g in enumerate(groups) if g != empty_group}
    return Summary("sd3", groups, ["sample 0 (cond)", "sample 1 (cond)"], [(0, 0), (0, 1)],
                   [(0, "joint", "early"), (1, "joint", "middle")],
                   torch.rand(2, 2, 4, generator=gen), values, maps)


def run(number=3) -> ProbeRun:
    r = ProbeRun(number)
    r.series = [SeriesEntry(s, 1.0 - s / 4, 0, "joint", 0, torch.zeros(4, 2)) for s in range(4)]
    return r


def test_text_shows_empty_groups_as_a_dash_and_the_run_of_this_probe():
    text = rp.text_report(summary(), run(3), ProbeSettings())
    assert "nan" not in text.lower()
    assert "run 3 of this Stability Probe, 4 steps recorded." in text.splitlines()[0]
    late = [line for line in text.splitlines() if line.startswith("late")]
    assert len(late) == 2 and all(line.split()[1:] == ["–"] * 4 for line in late)
    circulation = [{"node": "Skew Circulation", "text": "α 0.95, β 3: the paper's SD3 point"}]
    with_points = rp.text_report(summary(), run(), None, circulation)
    assert "Circulation in this run: Skew Circulation α 0.95, β 3" in with_points


def test_table_payload_is_json_without_nan():
    import json

    table = rp.table_payload(summary(), run(2))
    text = json.dumps(table, allow_nan=False)  # raises on NaN
    assert table["columns"] == ["E_X", "r_X", "Align_X", "eta_M"]
    late = table["samples"][0]["rows"][2]
    assert late["block"] == "late" and late["values"] == [None] * 4
    assert table["headline"].startswith("Hopfield stability (SD3), run 2 of this")
    assert "Align_X 0.690" in text


@pytest.mark.parametrize("grid", [(16, 16), (12, 20), (128, 128)])
def test_tiles_keep_their_size_and_frame_the_map_with_labels(grid):
    needs_pillow()
    s = summary(grid)
    tiles = rp.heat_tiles(s)
    heat = tiles.labelled(tiles.map_content())
    assert heat.shape == (6, grid[0] * 8, grid[1] * 8, 3)  # 3 groups with maps x 2 samples
    assert heat.min() >= 0 and heat.max() <= 1
    assert tiles.titles[:3] == ["sample 0 (cond) · early", "sample 0 (cond) · middle",
                                "sample 0 (cond) · All"]
    x, y, w, h = tiles.layout.content
    assert y >= tiles.layout.band and y + h <= heat.shape[1] - tiles.layout.band
    # the map sits unchanged inside the frame, a whole multiple of the grid when it fits
    assert torch.allclose(heat[:, y:y + h, x:x + w], tiles.map_content(), atol=1 / 255)
    if grid[0] * 8 >= 64:
        assert h % grid[0] == 0 and w % grid[1] == 0
    band = tiles.layout.band
    background = torch.tensor(rp.TILE_BACKGROUND)
    top = heat[0, :band]
    assert ((top - background).abs().sum(-1) > 0.5).sum() > 20, "no title text in the band"
    # the colour bar: red at its left end, blue at its right, white in the middle
    bar_row = heat[0, heat.shape[1] - band // 2]
    reds = (bar_row[:, 0] > 0.6) & (bar_row[:, 2] < 0.35)
    blues = (bar_row[:, 2] > 0.6) & (bar_row[:, 0] < 0.35)
    assert reds.any() and blues.any()
    assert reds.nonzero().max() < blues.nonzero().min()


def test_tiles_are_deterministic_and_ranges_shared_per_group():
    needs_pillow()
    s = summary()
    a, b = rp.heatmap_images(s), rp.heatmap_images(s)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    tiles = rp.heat_tiles(s)
    assert tiles.limits[0] == tiles.limits[3]  # sample 0 and 1 of 'early' share a range
    expected = torch.quantile(s.maps["early"].abs().flatten(), rp.COLOUR_PERCENTILE)
    assert tiles.limits[0] == pytest.approx(float(expected))
    ramp = diverging_colors(torch.tensor([[[-1.0, 0.0, 1.0]]]), torch.ones(1))[0, 0]
    assert ramp[0, 0] > ramp[0, 2] and ramp[2, 2] > ramp[2, 0]  # red to blue


def test_overlay_uses_the_image_inside_the_same_frame():
    needs_pillow()
    s = summary()
    tiles = rp.heat_tiles(s)
    image = torch.zeros(2, 64, 64, 3)
    image[1] = 1.0
    over = rp.overlay_images(tiles, s, image)
    heat = tiles.labelled(tiles.map_content())
    assert over.shape == heat.shape and not torch.equal(over, heat)
    band = tiles.layout.band
    assert torch.equal(over[:, :band], heat[:, :band])  # the same labels


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_saved_report_gets_the_umask_mode_like_comfyui_outputs(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = tmp_path / "hopfield" / "stability_00001_.safetensors"
        save_report(str(path), summary(), run(), {"basis": "value"})
        reference = tmp_path / "plain.png"
        reference.write_bytes(b"x")  # how open() (PIL, ComfyUI's SaveImage) creates files
    finally:
        os.umask(old)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE(reference.stat().st_mode)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
