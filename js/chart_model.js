// Pure layout for the per-layer Align_X chart: no DOM, no ComfyUI imports, unit-tested by
// tests/js/chart_model.test.mjs. The browser loads every .js under js/ as an extension module;
// this one only exports functions, so loading it on its own does nothing.

export const GROUP_COLORS = {
  down: "rgba(80, 140, 255, 0.13)",
  mid: "rgba(255, 190, 60, 0.16)",
  up: "rgba(90, 200, 120, 0.13)",
  early: "rgba(80, 140, 255, 0.13)",
  middle: "rgba(255, 190, 60, 0.16)",
  late: "rgba(90, 200, 120, 0.13)",
};

export const SERIES_COLORS = ["#4fa3ff", "#ff7a59", "#7bd88f", "#d68fff", "#ffd166", "#5ce1e6"];

// Validate and normalise the `hopfield_align_chart` payload; returns null if unusable.
export function readChart(payload) {
  const chart = Array.isArray(payload) ? payload[payload.length - 1] : payload;
  if (!chart || !Array.isArray(chart.samples) || chart.samples.length === 0) return null;
  const samples = chart.samples
    .filter((s) => s && Array.isArray(s.layers))
    .map((s) => ({
      label: String(s.label ?? ""),
      layers: s.layers
        .filter((l) => Number.isFinite(l.index))
        .map((l) => ({ index: l.index, group: String(l.group), kind: l.kind ?? "self",
                       align: Number.isFinite(l.align) ? l.align : null }))
        .sort((a, b) => a.index - b.index || a.kind.localeCompare(b.kind)),
      groups: s.groups ?? {},
    }));
  if (samples.every((s) => s.layers.length === 0)) return null;
  return { family: chart.family ?? "", note: chart.note ?? "", samples };
}

// Value range of the y axis: always includes 0, padded a little, never empty.
export function yRange(chart) {
  let lo = 0, hi = 0;
  for (const s of chart.samples) for (const l of s.layers) {
    if (l.align === null) continue;
    lo = Math.min(lo, l.align);
    hi = Math.max(hi, l.align);
  }
  if (hi - lo < 1e-9) hi = lo + 1;
  const pad = 0.08 * (hi - lo);
  return [lo - pad, hi + pad];
}

// Contiguous bands of one group along the x axis (layer positions, not raw indices, so the
// 140-module SDXL index with only even self-attention entries still fills the width).
export function groupBands(layers) {
  const bands = [];
  layers.forEach((l, i) => {
    const last = bands[bands.length - 1];
    if (last && last.group === l.group) last.end = i;
    else bands.push({ group: l.group, start: i, end: i });
  });
  return bands;
}

// Axis labels at the ends and at zero, leaving out a zero that would overprint an end label.
export function yTickValues(lo, hi) {
  const ticks = [lo, hi];
  if (Math.min(Math.abs(lo), Math.abs(hi)) > 0.12 * (hi - lo)) ticks.push(0);
  return ticks;
}

// Everything the renderer needs, in pixel coordinates of a width x height canvas.
export function layout(chart, width, height) {
  const margin = { left: 38, right: 10, top: 16, bottom: 30 };
  const plotW = Math.max(1, width - margin.left - margin.right);
  const plotH = Math.max(1, height - margin.top - margin.bottom);
  const layers = chart.samples.reduce((a, s) => (s.layers.length > a.length ? s.layers : a), []);
  const n = Math.max(1, layers.length);
  const [y0, y1] = yRange(chart);
  const x = (i) => margin.left + ((i + 0.5) / n) * plotW;
  const y = (v) => margin.top + (1 - (v - y0) / (y1 - y0)) * plotH;
  const bands = groupBands(layers).map((b) => ({
    ...b,
    x0: margin.left + (b.start / n) * plotW,
    x1: margin.left + ((b.end + 1) / n) * plotW,
    color: GROUP_COLORS[b.group] ?? "rgba(160,160,160,0.12)",
  }));
  const series = chart.samples.map((s, k) => ({
    label: s.label,
    color: SERIES_COLORS[k % SERIES_COLORS.length],
    points: s.layers.map((l, i) => (l.align === null ? null : [x(i), y(l.align)])),
    means: bands.map((b) => ({ group: b.group, x0: b.x0, x1: b.x1,
                               value: s.groups?.[b.group] ?? null,
                               y: Number.isFinite(s.groups?.[b.group]) ? y(s.groups[b.group]) : null })),
  }));
  return { margin, plotW, plotH, bands, series, zeroY: y(0), yTicks: yTickValues(y0, y1).map((v) => ({ v, y: y(v) })),
           xLabels: layers.map((l, i) => ({ text: String(l.index), x: x(i) })) };
}
