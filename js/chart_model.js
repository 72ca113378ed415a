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

export const GROUP_TITLES = { down: "Down", mid: "Mid", up: "Up", early: "early",
                              middle: "middle", late: "late" };

export const SERIES_COLORS = ["#4fa3ff", "#ff7a59", "#7bd88f", "#d68fff", "#ffd166", "#5ce1e6"];

const FONT_PX = 10;
const LINE = 12; // text row height
const MAX_LEGEND_ROWS = 2;

// Width of a 10 px sans-serif string; the renderer passes ctx.measureText instead.
export function approxTextWidth(text) {
  return 5.6 * String(text).length;
}

// Validate and normalise the `hopfield_align_chart` payload; returns null if unusable.
export function readChart(payload) {
  const chart = Array.isArray(payload) ? payload[payload.length - 1] : payload;
  if (!chart || !Array.isArray(chart.samples) || chart.samples.length === 0) return null;
  const samples = chart.samples
    .filter((s) => s && Array.isArray(s.layers))
    .map((s) => ({
      label: String(s.label ?? ""),
      layers: s.layers
        .filter((l) => l && Number.isFinite(l.index))
        .map((l) => ({ index: l.index, group: String(l.group), kind: String(l.kind ?? "self"),
                       align: Number.isFinite(l.align) ? l.align : null }))
        .sort((a, b) => a.index - b.index || a.kind.localeCompare(b.kind)),
      groups: s.groups && typeof s.groups === "object" ? s.groups : {},
    }));
  if (samples.every((s) => s.layers.length === 0)) return null;
  return { family: String(chart.family ?? ""), note: String(chart.note ?? ""), samples };
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

// Legend entries flowed left to right into at most MAX_LEGEND_ROWS rows; the rest is summarised.
export function legendLayout(labels, x0, width, measure = approxTextWidth) {
  const entries = [];
  let row = 0, x = x0, hidden = 0;
  labels.forEach((label, k) => {
    const w = 14 + measure(label) + 10; // swatch, text, gap
    if (x > x0 && x + w > x0 + width) { row += 1; x = x0; }
    if (row >= MAX_LEGEND_ROWS) { hidden += 1; return; }
    entries.push({ label, k, x, row });
    x += w;
  });
  return { entries, rows: Math.min(row + 1, MAX_LEGEND_ROWS), hidden };
}

// Spread labels so none is closer than `gap` to the next, inside [lo, hi] (when they fit):
// push down from the top, then back up from the bottom.
export function spreadLabels(ys, gap, lo, hi) {
  const order = ys.map((y, i) => [Math.min(Math.max(y, lo), hi), i]).sort((a, b) => a[0] - b[0]);
  const v = order.map(([y]) => y);
  for (let j = 1; j < v.length; j++) v[j] = Math.max(v[j], v[j - 1] + gap);
  if (v.length) v[v.length - 1] = Math.min(v[v.length - 1], hi);
  for (let j = v.length - 2; j >= 0; j--) v[j] = Math.min(v[j], v[j + 1] - gap);
  const out = new Array(ys.length);
  order.forEach(([, i], j) => { out[i] = Math.max(lo, v[j]); });
  return out;
}

// Every x label whose index is a multiple of `step`, with `step` large enough not to overprint.
export function xLabelStep(count, plotW, widest) {
  const slot = plotW / Math.max(1, count);
  return Math.max(1, Math.ceil((widest + 6) / Math.max(slot, 1e-9)));
}

// Everything the renderer needs, in pixel coordinates of a width x height canvas.
export function layout(chart, width, height, measure = approxTextWidth) {
  const left = 44, right = 10; // the left margin holds the y tick labels and the y title
  const legend = legendLayout(chart.samples.map((s) => s.label), left, width - left - right,
                              measure);
  const legendTop = 3;
  // rows: legend, then block titles, then the plot
  const bandTitleY = legendTop + legend.rows * LINE + FONT_PX;
  const margin = { left, right, top: bandTitleY + 5, bottom: 30 };
  const plotW = Math.max(1, width - margin.left - margin.right);
  const plotH = Math.max(1, height - margin.top - margin.bottom);
  const layers = chart.samples.reduce((a, s) => (s.layers.length > a.length ? s.layers : a), []);
  const n = Math.max(1, layers.length);
  const [y0, y1] = yRange(chart);
  const x = (i) => margin.left + ((i + 0.5) / n) * plotW;
  const y = (v) => margin.top + (1 - (v - y0) / (y1 - y0)) * plotH;
  const bands = groupBands(layers).map((b) => {
    const x0 = margin.left + (b.start / n) * plotW;
    const x1 = margin.left + ((b.end + 1) / n) * plotW;
    const title = GROUP_TITLES[b.group] ?? b.group;
    return { ...b, x0, x1, title, color: GROUP_COLORS[b.group] ?? "rgba(160,160,160,0.12)",
             // a title that does not fit its band is left out rather than overprinted
             showTitle: measure(title) + 4 <= x1 - x0 };
  });
  const series = chart.samples.map((s, k) => ({
    label: s.label,
    color: SERIES_COLORS[k % SERIES_COLORS.length],
    points: s.layers.map((l, i) => (l.align === null ? null : [x(i), y(l.align)])),
  }));
  // group means: a dashed line per series over its band, labelled at the band's right end
  const means = [];
  for (const b of bands) {
    const rows = chart.samples
      .map((s, k) => ({ k, value: s.groups?.[b.group] }))
      .filter((m) => Number.isFinite(m.value));
    const labelYs = spreadLabels(rows.map((m) => y(m.value) - 3), FONT_PX + 1,
                                 margin.top + FONT_PX, margin.top + plotH - 2);
    rows.forEach((m, j) => {
      const text = m.value.toFixed(3);
      means.push({ group: b.group, k: m.k, color: series[m.k].color, x0: b.x0, x1: b.x1,
                   value: m.value, y: y(m.value), text,
                   labelX: Math.max(b.x0 + 2, b.x1 - measure(text) - 3), labelY: labelYs[j] });
    });
  }
  const widest = Math.max(...layers.map((l) => measure(String(l.index))), 0);
  const step = xLabelStep(layers.length, plotW, widest);
  const xLabels = layers
    .map((l, i) => ({ text: String(l.index), x: x(i), i }))
    .filter((l) => l.i % step === 0)
    .map(({ text, x: px }) => ({ text, x: px - measure(text) / 2 }));
  return {
    margin, plotW, plotH, bands, series, means, xLabels,
    zeroY: y(0),
    yTicks: yTickValues(y0, y1).map((v) => ({ v, y: y(v) })),
    legend: { ...legend, y: legendTop + FONT_PX },
    bandTitleY,
    xTitle: { text: "layer index", y: height - 4 },
    yTitle: { text: "Align_X", x: 2, y: legendTop + FONT_PX },
  };
}

// --- The report's table (the `hopfield_report_table` payload) -------------------------------

export const EMPTY_CELL = "–"; // a block group with no recorded layer
const MEASURE_FORMATS = [
  (v) => v.toPrecision(4), // E_X: any scale
  (v) => v.toFixed(3), // r_X: a fraction
  (v) => v.toFixed(4), // Align_X: a cosine
  (v) => v.toFixed(3), // eta_M: -1..1
];

// One table cell: the measure in its format, "–" where the group has no value.
export function formatMeasure(value, column) {
  if (typeof value !== "number" || !Number.isFinite(value)) return EMPTY_CELL;
  const format = MEASURE_FORMATS[column] ?? ((v) => v.toPrecision(4));
  return format(value).replace(/^-/, "−"); // a real minus keeps the columns' widths even
}

// Validate and normalise the table payload; null when unusable.
export function readTable(payload) {
  const table = Array.isArray(payload) ? payload[payload.length - 1] : payload;
  if (!table || !Array.isArray(table.samples) || !Array.isArray(table.columns)) return null;
  const columns = table.columns.map(String);
  const samples = table.samples
    .filter((s) => s && Array.isArray(s.rows))
    .map((s) => ({
      label: String(s.label ?? ""),
      rows: s.rows.filter(Boolean).map((r) => ({
        block: String(r.block ?? ""),
        title: String(r.title ?? r.block ?? ""),
        cells: columns.map((_, k) => formatMeasure(r.values?.[k], k)),
      })),
    }));
  if (samples.length === 0) return null;
  return { headline: String(table.headline ?? ""), columns, samples,
           notes: Array.isArray(table.notes) ? table.notes.map(String) : [] };
}

// Font size of the table for a node of this width: every column fits without a scroll bar
// (the widest cell is about 8 characters; the block column takes the leftover).
export function tableFontPx(width) {
  return Math.max(8, Math.min(12, Math.floor((width || 0) / 34)));
}

// --- The circulation nodes' line: the α, β a run used ----------------------------------------

export const PAPER_POINT = "paper point for this model";
export const CUSTOM_POINT = "custom α, β";

// What the node says before a run, from its operating_point choice.
export function pointHint(choice) {
  return choice === CUSTOM_POINT
    ? "Steers with the α and β above."
    : "Steers with the paper's point for the connected model (SDXL α 1.05 β 3 or α 1.2 β 5 " +
      "adaptive; SD3 α 0.95 β 3); α and β above are not used.";
}

// What the node says after a run (the `hopfield_operating_point` payload).
export function pointText(payload) {
  const used = Array.isArray(payload) ? payload[payload.length - 1] : payload;
  if (!used || typeof used.text !== "string") return null;
  return `Last run: ${used.text}`;
}

// A workflow saved before operating_point existed has fewer widget values: it meant the α, β
// widgets, so it loads as "custom α, β" (a new node gets the paper point).
export function savedBeforeOperatingPoint(widgetsValues, operatingPointIndex) {
  return Array.isArray(widgetsValues) && operatingPointIndex >= 0 &&
    widgetsValues.length <= operatingPointIndex;
}
