"""What the Stability Report node shows: labelled heatmaps, overlay, Align per block, chart,
table and text, built from a run's Summary in one call (``build_report``).

Every heatmap tile is labelled inside the IMAGE itself (sample, CFG branch and block group in a
band above the map, a colour bar with the value range below it), so a tile saved or previewed
anywhere still says what it shows. The tile keeps the size of the latent grid times 8; the map
is drawn a little smaller inside it, between the two bands, so no label covers data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..hopfield.heatmap import diverging_colors, overlay, upscale
from ..vocabulary import MEASURES
from .registry import ProbeRun, ProbeSettings, find_run, probe_state
from .report_file import output_path, save_report
from .summary import SCALE_NOTE, Summary, summarise

COLOUR_PERCENTILE = 0.99
PIXEL_SCALE = 8  # heatmap tile pixels per latent cell
GROUP_TITLES = {"down": "Down", "mid": "Mid", "up": "Up", "all": "All", "early": "early",
                "middle": "middle", "late": "late"}
MEASURE_COLUMNS = ("E_X", "r_X", "Align_X", "eta_M")
EMPTY = "–"  # a block group with no recorded layer (e.g. 'late' on a two-block SD3)


def block_align(summary: Summary) -> dict[str, float]:
    """Align per block for the FLOAT outputs (first sample). SD3's thirds fill down/mid/up."""
    names = ("down", "mid", "up", "all")
    values = summary.group_values[0, :, MEASURES.index("align")].tolist()
    return {name: float(v) for name, v in zip(names, values, strict=True)}


def chart_payload(summary: Summary) -> dict:
    """The `hopfield_align_chart` UI payload the js chart draws (JSON-able; no NaN)."""
    align = MEASURES.index("align")
    samples = []
    for s, label in enumerate(summary.samples):
        layers = [
            {"index": index, "group": group, "kind": kind,
             "align": _finite(summary.layer_values[s, j, align])}
            for j, (index, kind, group) in enumerate(summary.layers)
        ]
        groups = {g: _finite(summary.group_values[s, i, align])
                  for i, g in enumerate(summary.groups)}
        samples.append({"label": label, "layers": layers, "groups": groups})
    return {"family": summary.family, "samples": samples,
            "note": "Align_X per self-attention layer, mean over recorded steps."}


def _finite(value: torch.Tensor) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


def approximation_notes(settings: ProbeSettings, run: ProbeRun) -> list[str]:
    """What in this report is an approximation of the paper's measures, said plainly."""
    notes = []
    if settings.basis == "value":
        notes.append("Basis: value (the attention output's channels per head), a different "
                     "statistic from the paper's input basis; compare runs with each other, "
                     "and use basis 'input' for the paper's numbers.")
    elif settings.channels:
        notes.append(f"Basis: input over a fixed subset of {settings.channels} of X's channels "
                     "(channels = 0 gives the exact value).")
    if settings.basis == "input" and run.steering_spaces and (
            settings.channels or run.steering_spaces != {"input"}):
        notes.append("A circulation node was active: the input basis re-derived its blend over "
                     "the probed channels of X, with the norm matched over those channels "
                     "(approximate; exact only for space 'input' probed with channels = 0).")
    if run.approximate_match:
        notes.append("The LATENT matched this run's output only approximately (e.g. a "
                      "sampler's denoised_output).")
    return notes


def _cell(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else EMPTY


def headline(summary: Summary, run: ProbeRun) -> str:
    """The report's first line: family, which run of this probe, how many steps."""
    steps = f"{run.steps} step{'s' if run.steps != 1 else ''} recorded"
    return (f"Hopfield stability ({summary.family.upper()}), run {run.number} of this "
            f"Stability Probe, {steps}.")


PAPER_NOTE = ("Stable retrieval: high Align_X, low r_X, low E_X. The paper's stable top-20 % of "
              "SDXL samples averaged Align_X 0.690, the unstable bottom-20 % 0.650 (table 2, "
              "input basis, cond branch).")


def circulation_lines(circulation: list[dict] | None) -> list[str]:
    """Which circulation nodes steered the run, with the α, β they used."""
    if not circulation:
        return []
    return ["Circulation in this run: " + "; ".join(
        f"{c.get('node') or 'circulation'} {c.get('text', '')}".strip() for c in circulation)]


def report_notes(summary: Summary, run: ProbeRun, settings: ProbeSettings | None,
                 circulation: list[dict] | None = None) -> list[str]:
    notes = [*circulation_lines(circulation), PAPER_NOTE, SCALE_NOTE]
    if summary.groups_note:
        notes.append(summary.groups_note)
    if settings is not None:
        notes += approximation_notes(settings, run)
    return notes


def text_report(summary: Summary, run: ProbeRun, settings: ProbeSettings | None = None,
                circulation: list[dict] | None = None) -> str:
    """The report as plain text: one table per sample, then the notes. A block group with no
    recorded layer shows "–"."""
    lines = [headline(summary, run)]
    header = (f"{'block':<8}{MEASURE_COLUMNS[0]:>11}{MEASURE_COLUMNS[1]:>8}"
              f"{MEASURE_COLUMNS[2]:>9}{MEASURE_COLUMNS[3]:>8}")
    for s, label in enumerate(summary.samples):
        lines += ["", label, header]
        for g, group in enumerate(summary.groups):
            e, r, a, eta = summary.group_values[s, g].tolist()
            lines.append(f"{group:<8}{_cell(e, '.4g'):>11}{_cell(r, '.3f'):>8}"
                         f"{_cell(a, '.4f'):>9}{_cell(eta, '.3f'):>8}")
    lines += ["", *report_notes(summary, run, settings, circulation)]
    return "\n".join(lines)


def table_payload(summary: Summary, run: ProbeRun, settings: ProbeSettings | None = None,
                  circulation: list[dict] | None = None) -> dict:
    """The `hopfield_report_table` UI payload: the same numbers as the text, as a table the
    frontend lays out for the node's width (JSON-able; None where a group is empty)."""
    samples = []
    for s, label in enumerate(summary.samples):
        rows = [{"block": group, "title": GROUP_TITLES.get(group, group),
                 "values": [_finite(v) for v in summary.group_values[s, g]]}
                for g, group in enumerate(summary.groups)]
        samples.append({"label": label, "rows": rows})
    return {"headline": headline(summary, run), "columns": list(MEASURE_COLUMNS),
            "samples": samples, "notes": report_notes(summary, run, settings, circulation)}


# --- Labelled heatmap tiles -------------------------------------------------------------------

TILE_BACKGROUND = (0.13, 0.13, 0.14)
TILE_TEXT = (0.93, 0.93, 0.93)


def _font(size: int):
    """Pillow's built-in font at ``size`` px (ComfyUI ships Pillow); the fixed bitmap font on
    Pillow older than 10.1. Its glyphs are ASCII: the tiles write "lambda", not the Greek."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _range_text(value: float) -> str:
    return f"{value:.3g}"


@dataclass(frozen=True)
class TileLayout:
    """Where the label band, the map and the colour bar sit in an (h, w) tile."""

    height: int
    width: int
    band: int  # height of the label band above and of the colour-bar band below the map
    content: tuple[int, int, int, int]  # x, y, w, h of the map

    @staticmethod
    def of(grid: tuple[int, int], pixel_scale: int = PIXEL_SCALE) -> TileLayout:
        """The layout of a tile for an (h, w) latent grid: the tile is the grid times
        ``pixel_scale``; the map inside it is the largest whole multiple of the grid (crisp
        cells) that leaves room for the two bands."""
        h, w = grid
        height, width = h * pixel_scale, w * pixel_scale
        band = max(14, round(0.1 * height))
        fit = min((height - 2 * band) / h, (width - 4) / w)
        scale = math.floor(fit) if fit >= 2 else max(fit, 1e-3)
        inner_h, inner_w = max(1, round(h * scale)), max(1, round(w * scale))
        x = (width - inner_w) // 2
        y = band + (height - 2 * band - inner_h) // 2
        return TileLayout(height, width, band, (x, y, inner_w, inner_h))


def _fit_font(draw, text: str, band: int, width: int):
    size = max(8, round(0.68 * band))
    font = _font(size)
    while size > 8 and draw.textlength(text, font=font) > width:
        size -= 1
        font = _font(size)
    return font


def _label_tile(content: torch.Tensor, layout: TileLayout, title: str, limit: float):
    """One tile [h, w, 3]: the title band, the map (``content``, already at the layout's map
    size) and a colour bar from -limit (red) through 0 (white) to +limit (blue)."""
    import numpy as np
    from PIL import Image, ImageDraw

    h, w, band = layout.height, layout.width, layout.band
    tile = Image.new("RGB", (w, h), tuple(round(255 * c) for c in TILE_BACKGROUND))
    x, y, cw, ch = layout.content
    pixels = (content.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    tile.paste(Image.fromarray(np.ascontiguousarray(pixels), "RGB"), (x, y))
    draw = ImageDraw.Draw(tile)
    text_fill = tuple(round(255 * c) for c in TILE_TEXT)
    pad = max(2, band // 6)
    font = _fit_font(draw, title, band, w - 2 * pad)
    draw.text((w / 2, band / 2), title, font=font, fill=text_fill, anchor="mm")
    # the colour bar: its range written at both ends
    low, high = f"-{_range_text(limit)}", f"+{_range_text(limit)}"
    font = _font(max(8, round(0.6 * band)))
    left_w = draw.textlength(low, font=font)
    right_w = draw.textlength(high, font=font)
    bar_x0, bar_x1 = round(pad + left_w + pad), round(w - pad - right_w - pad)
    bar_y0, bar_y1 = h - band + round(0.25 * band), h - round(0.25 * band)
    middle = h - band / 2
    draw.text((pad, middle), low, font=font, fill=text_fill, anchor="lm")
    draw.text((w - pad, middle), high, font=font, fill=text_fill, anchor="rm")
    if bar_x1 - bar_x0 >= 4:
        ramp = torch.linspace(-1.0, 1.0, bar_x1 - bar_x0).reshape(1, 1, -1)
        colours = diverging_colors(ramp, torch.ones(1))[0]  # [1, n, 3]
        bar = (colours.expand(bar_y1 - bar_y0, -1, -1) * 255).round().to(torch.uint8).numpy()
        tile.paste(Image.fromarray(np.ascontiguousarray(bar), "RGB"), (bar_x0, bar_y0))
        zero = (bar_x0 + bar_x1) // 2
        draw.line([(zero, bar_y0 - 2), (zero, bar_y1 + 1)], fill=text_fill, width=1)
    return torch.from_numpy(np.asarray(tile, dtype=np.float32) / 255.0)


def _resize(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """IMAGE [N, h, w, 3] -> [N, H, W, 3]."""
    if mode == "nearest":
        return upscale(images, size)
    return torch.nn.functional.interpolate(images.movedim(-1, 1), size=size, mode=mode,
                                           align_corners=False).movedim(1, -1)


@dataclass
class HeatTiles:
    """The coloured maps of a report, before and after labelling."""

    maps: torch.Tensor  # [N, H, W] lambda maps, sample-major (sample, then block group)
    colours: torch.Tensor  # [N, H, W, 3] coloured, latent resolution
    titles: list[str]  # one per tile: "sample 0 (cond) · Down"
    limits: list[float]  # the colour range of each tile (shared within a block group)
    layout: TileLayout

    def labelled(self, content: torch.Tensor) -> torch.Tensor:
        """IMAGE [N, h, w, 3]: each map-sized ``content`` tile framed with its labels."""
        return torch.stack([_label_tile(c, self.layout, t, lim)
                            for c, t, lim in zip(content, self.titles, self.limits, strict=True)])

    def map_content(self) -> torch.Tensor:
        _, _, cw, ch = self.layout.content
        return _resize(self.colours, (ch, cw), "nearest")


def heat_tiles(summary: Summary, pixel_scale: int = PIXEL_SCALE) -> HeatTiles:
    """The coloured lambda map of every sample and block group (sample-major).

    The colour range is symmetric and shared by the samples of one block group (its 99th
    percentile of |lambda|), so samples compare at a glance; groups get their own range, since
    lambda's scale differs between UNet levels.
    """
    images, titles, limits = [], [], []
    group_limit = {
        group: torch.quantile(maps.abs().flatten(), COLOUR_PERCENTILE)
        for group, maps in summary.maps.items()
    }
    for s, label in enumerate(summary.samples):
        for group in summary.groups:
            if group in summary.maps:
                images.append(summary.maps[group][s])
                titles.append(f"{label} · {GROUP_TITLES.get(group, group)}")
                limits.append(group_limit[group])
    if not images:
        raise RuntimeError(
            "Stability Report: no token maps were recorded for this run (the layers that ran "
            "gave no image-token grid)"
        )
    maps = torch.stack(images)
    colours = diverging_colors(maps, torch.stack(limits))
    layout = TileLayout.of(tuple(maps.shape[-2:]), pixel_scale)
    return HeatTiles(maps, colours, titles, [float(v) for v in limits], layout)


def heatmap_images(summary: Summary, pixel_scale: int = PIXEL_SCALE
                   ) -> tuple[torch.Tensor, list[str]]:
    """IMAGE batch: one labelled lambda map per sample and block group (sample-major)."""
    tiles = heat_tiles(summary, pixel_scale)
    return tiles.labelled(tiles.map_content()), tiles.titles


def overlay_images(tiles: HeatTiles, summary: Summary, image: torch.Tensor) -> torch.Tensor:
    """Each map over the decoded image of its sample (cycled when fewer images are given),
    framed with the same labels as the heatmaps."""
    if image.ndim != 4 or image.shape[-1] not in (3, 4):
        raise ValueError(f"Stability Report: 'image' must be an IMAGE [B, H, W, 3], got "
                         f"shape {tuple(image.shape)}")
    n = len(tiles.titles)
    per_sample = n // len(summary.samples)  # tiles are sample-major
    # sample (branch, row) -> decoded image row: cond and uncond of one row share the image
    index = torch.tensor([summary.sample_keys[i // per_sample][1] % image.shape[0]
                          for i in range(n)])
    picked = image[..., :3].index_select(0, index).float().cpu()
    _, _, cw, ch = tiles.layout.content
    picked = _resize(picked, (ch, cw), "bilinear")
    blended = overlay(picked, tiles.map_content()).clamp(0, 1)
    return tiles.labelled(blended)


@dataclass
class Report:
    """Everything the Stability Report node outputs, for one sampling run."""

    heatmaps: torch.Tensor  # IMAGE: labelled lambda maps per sample and block group
    overlay: torch.Tensor  # IMAGE: the same over the decoded image (heatmaps without one)
    align: dict[str, float]  # Align_X of the first sample: down, mid, up, all
    text: str
    chart: dict  # the js chart's payload
    table: dict  # the js table's payload
    saved_path: str | None = None


def build_report(handle, latent, image: torch.Tensor | None = None,
                 filename_prefix: str | None = None,
                 circulation_of: Callable[[ProbeRun], list[dict]] | None = None) -> Report:
    """The report of the run behind ``latent`` (a LATENT dict's samples); saved as
    .safetensors under ComfyUI's output folder when ``filename_prefix`` is given.
    ``circulation_of(run)``: the (α, β) the circulation nodes of that run used, when known."""
    run = find_run(handle, latent)
    circulation = circulation_of(run) if circulation_of is not None else None
    state = probe_state(handle)
    summary = summarise(state, run)
    tiles = heat_tiles(summary)
    heat = tiles.labelled(tiles.map_content())
    over = overlay_images(tiles, summary, image) if image is not None else heat
    text = text_report(summary, run, state.settings, circulation)
    table = table_payload(summary, run, state.settings, circulation)
    path = None
    if filename_prefix is not None:
        path = output_path(filename_prefix)
        save_report(path, summary, run, dataclasses.asdict(state.settings))
        text += f"\nSaved: {path}"
        table["notes"].append(f"Saved: {path}")
    return Report(heat, over, block_align(summary), text, chart_payload(summary), table, path)
