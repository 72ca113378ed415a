// Hopfield Circulation frontend.
// - Stability Report: the per-layer Align_X chart and the block table, laid out for the node's
//   width, redrawn on resize and on a colour-palette change, marked stale when a run fails
//   before the report is made again.
// - Skew / Adaptive Circulation: a line saying which α, β the node steers with (the paper's
//   point for the connected model by default), and editing α or β selects "custom α, β".
// Display-only: the widgets are kept out of saved workflows and of the prompt. Layout and
// formatting live in chart_model.js (pure, unit-tested); this file paints and wires them.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
  CUSTOM_POINT, layout, pointHint, pointText, readChart, readTable,
  savedBeforeOperatingPoint, tableFontPx,
} from "./chart_model.js";

const REPORT_NODE = "HopfieldCirculation_StabilityReport";
const CIRCULATION_NODES = ["HopfieldCirculation_SkewCirculation",
                           "HopfieldCirculation_AdaptiveCirculation"];
const CHART_HEIGHT = 200;
const TABLE_MIN_HEIGHT = 150; // the block table below the chart: one sample's rows, then it scrolls
const TABLE_MAX_HEIGHT = 230;
const STALE_TEXT = "Stale: the last run failed before this report was made again; this is " +
  "the report of an earlier run.";

// Colours from the frontend's theme variables, so light palettes get a readable chart too.
function theme(element) {
  const css = getComputedStyle(element);
  const pick = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
  return {
    background: pick("--comfy-input-bg", "#1b1b1f"),
    text: pick("--input-text", "#ddd"),
    muted: pick("--descrip-text", "#999"),
    axis: pick("--border-color", "#555"),
    error: pick("--error-text", "#ff4444"),
  };
}

// Every drawn report redraws when the palette changes: the frontend writes the palette's
// colours as CSS variables on <html> (and switches classes for light/dark).
const redrawers = new Set();
let themeObserver = null;
function watchTheme() {
  if (themeObserver || typeof MutationObserver === "undefined") return;
  let pending = false;
  themeObserver = new MutationObserver(() => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      for (const redraw of redrawers) redraw();
    });
  });
  const options = { attributes: true, attributeFilter: ["style", "class"] };
  themeObserver.observe(document.documentElement, options);
  if (document.body) themeObserver.observe(document.body, options);
}

function draw(canvas, chart, stale = false) {
  const width = canvas.clientWidth;
  if (!width) return; // not laid out (collapsed, off screen): the resize observer redraws later
  const height = CHART_HEIGHT;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  if (!ctx) return;
  const colors = theme(canvas);
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.fillStyle = colors.background;
  ctx.fillRect(0, 0, width, height);
  ctx.font = "10px sans-serif";
  ctx.textBaseline = "alphabetic";
  if (!chart) {
    ctx.fillStyle = colors.muted;
    ctx.fillText("Align_X per layer appears here after a run.", 10, height / 2);
    return;
  }
  const L = layout(chart, width, height, (t) => ctx.measureText(t).width);
  const { margin, plotW, plotH } = L;

  for (const band of L.bands) {
    ctx.fillStyle = band.color;
    ctx.fillRect(band.x0, margin.top, band.x1 - band.x0, plotH);
    if (band.showTitle) {
      ctx.fillStyle = colors.text;
      ctx.fillText(band.title, band.x0 + 2, L.bandTitleY);
    }
  }
  ctx.strokeStyle = colors.axis;
  ctx.lineWidth = 1;
  ctx.strokeRect(margin.left + 0.5, margin.top + 0.5, plotW - 1, plotH - 1);
  ctx.beginPath();
  ctx.moveTo(margin.left, L.zeroY);
  ctx.lineTo(margin.left + plotW, L.zeroY);
  ctx.stroke();

  ctx.fillStyle = colors.muted;
  ctx.fillText(L.yTitle.text, L.yTitle.x, L.yTitle.y);
  for (const t of L.yTicks) ctx.fillText(t.v.toFixed(2), 2, t.y + 3);
  for (const l of L.xLabels) ctx.fillText(l.text, l.x, margin.top + plotH + 12);
  ctx.fillText(L.xTitle.text, margin.left + plotW / 2 - ctx.measureText(L.xTitle.text).width / 2,
               L.xTitle.y);

  ctx.lineWidth = 1.5;
  for (const s of L.series) {
    ctx.strokeStyle = s.color;
    ctx.beginPath();
    let pen = false;
    for (const p of s.points) {
      if (!p) { pen = false; continue; }
      if (pen) ctx.lineTo(p[0], p[1]); else ctx.moveTo(p[0], p[1]);
      pen = true;
    }
    ctx.stroke();
    ctx.fillStyle = s.color;
    for (const p of s.points) if (p) ctx.fillRect(p[0] - 1.5, p[1] - 1.5, 3, 3);
  }

  ctx.lineWidth = 1;
  for (const m of L.means) {
    ctx.strokeStyle = m.color;
    ctx.setLineDash([4, 3]);
    ctx.beginPath();
    ctx.moveTo(m.x0, m.y);
    ctx.lineTo(m.x1, m.y);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = colors.background;
    const w = ctx.measureText(m.text).width;
    ctx.fillRect(m.labelX - 1, m.labelY - 9, w + 2, 11); // keep the number readable over lines
    ctx.fillStyle = m.color;
    ctx.fillText(m.text, m.labelX, m.labelY);
  }

  for (const e of L.legend.entries) {
    const y = L.legend.y + 12 * e.row;
    ctx.fillStyle = L.series[e.k].color;
    ctx.fillRect(e.x, y - 5, 10, 3);
    ctx.fillStyle = colors.text;
    ctx.fillText(e.label, e.x + 14, y);
  }
  if (L.legend.hidden) {
    ctx.fillStyle = colors.muted;
    ctx.fillText(`+${L.legend.hidden} more`, width - margin.right - 50, L.bandTitleY);
  }
  if (stale) { // greyed out, with the reason across the middle
    ctx.globalAlpha = 0.6;
    ctx.fillStyle = colors.background;
    ctx.fillRect(0, 0, width, height);
    ctx.globalAlpha = 1;
    ctx.font = "bold 12px sans-serif";
    const label = "stale: from an earlier run (the last run failed)";
    const w = ctx.measureText(label).width;
    ctx.fillStyle = colors.error;
    ctx.fillText(label, Math.max(4, (width - w) / 2), height / 2);
  }
}

function cellStyle(align) {
  return `text-align:${align};padding:0 3px;overflow:hidden;text-overflow:ellipsis;` +
    "white-space:nowrap;";
}

// The report's numbers as an HTML table that fits the node's width, then the notes, wrapped.
function renderTable(box, table, text, stale) {
  box.replaceChildren();
  const width = box.clientWidth || 400;
  box.style.fontSize = `${tableFontPx(width)}px`;
  if (stale) {
    const banner = document.createElement("div");
    banner.className = "hopfield-stale";
    banner.textContent = STALE_TEXT;
    banner.style.cssText = "color:var(--error-text,#f44);font-weight:bold;margin-bottom:3px;" +
      "white-space:normal;";
    box.append(banner);
  }
  if (!table) { // no table payload (nothing run yet, or an older server): the text, wrapped
    const pre = document.createElement("div");
    pre.textContent = text || "The block table appears here after a run.";
    pre.style.cssText = "white-space:pre-wrap;font-family:monospace;";
    box.append(pre);
    return;
  }
  const body = document.createElement("div");
  body.style.opacity = stale ? "0.55" : "1";
  const head = document.createElement("div");
  head.textContent = table.headline;
  head.style.cssText = "white-space:normal;margin-bottom:2px;";
  const grid = document.createElement("table");
  grid.className = "hopfield-report-table";
  grid.style.cssText = "width:100%;table-layout:fixed;border-collapse:collapse;" +
    "font-variant-numeric:tabular-nums;";
  const cols = document.createElement("colgroup");
  const first = document.createElement("col");
  first.style.width = "22%";
  cols.append(first);
  for (let k = 0; k < table.columns.length; k++) cols.append(document.createElement("col"));
  grid.append(cols);
  const header = grid.insertRow();
  for (const [k, name] of ["block", ...table.columns].entries()) {
    const th = document.createElement("th");
    th.textContent = name;
    th.style.cssText = cellStyle(k === 0 ? "left" : "right") +
      "color:var(--descrip-text,#999);font-weight:normal;border-bottom:1px solid " +
      "var(--border-color,#555);";
    header.append(th);
  }
  for (const sample of table.samples) {
    const label = grid.insertRow().insertCell();
    label.colSpan = table.columns.length + 1;
    label.textContent = sample.label;
    label.style.cssText = "padding:3px 3px 0;font-weight:bold;white-space:nowrap;";
    for (const row of sample.rows) {
      const tr = grid.insertRow();
      const name = tr.insertCell();
      name.textContent = row.title;
      name.style.cssText = cellStyle("left");
      for (const cell of row.cells) {
        const td = tr.insertCell();
        td.textContent = cell;
        td.style.cssText = cellStyle("right");
      }
    }
  }
  const notes = document.createElement("div");
  notes.style.cssText = "white-space:normal;color:var(--descrip-text,#999);margin-top:4px;";
  for (const note of table.notes) {
    const p = document.createElement("p");
    p.textContent = note;
    p.style.cssText = "margin:0 0 3px;";
    notes.append(p);
  }
  body.append(head, grid, notes);
  box.append(body);
}

function attachReport(node) {
  const container = document.createElement("div");
  container.className = "hopfield-circulation-chart";
  // fills the height the frontend gives the widget and never spills over the image preview
  // below it: the table shrinks (to its minimum) and scrolls
  container.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;" +
    "height:100%;overflow:hidden;box-sizing:border-box;";
  const canvas = document.createElement("canvas");
  canvas.style.cssText = `width:100%;height:${CHART_HEIGHT}px;border-radius:4px;display:block;`;
  const table = document.createElement("div");
  table.className = "hopfield-circulation-table";
  table.style.cssText = `min-height:${TABLE_MIN_HEIGHT}px;max-height:${TABLE_MAX_HEIGHT}px;` +
    "overflow-y:auto;overflow-x:hidden;color:var(--input-text,#ccc);line-height:1.35;" +
    "flex:1 1 auto;";
  canvas.style.flex = "0 0 auto";
  container.append(canvas, table);
  let lastWidth = 0;
  const redraw = () => {
    draw(canvas, node.__hopfieldChart ?? null, !!node.__hopfieldStale);
    if (table.clientWidth !== lastWidth) { // the table only needs a new font size on resize
      lastWidth = table.clientWidth;
      refreshTable(node);
    }
  };
  const widget = node.addDOMWidget("align_chart", "hopfield_chart", container, {
    serialize: false, // keep it out of the prompt
    hideOnZoom: false,
    getMinHeight: () => CHART_HEIGHT + TABLE_MIN_HEIGHT + 8,
    afterResize: redraw,
  });
  widget.serialize = false; // and out of the saved workflow's widgets_values
  node.__hopfieldChartCanvas = canvas;
  node.__hopfieldChartText = table;
  node.__hopfieldRedraw = redraw;
  redrawers.add(redraw);
  watchTheme();
  if (typeof ResizeObserver !== "undefined") {
    const observer = new ResizeObserver(redraw);
    observer.observe(canvas);
    node.__hopfieldChartObserver = observer;
  }
  refreshTable(node);
  requestAnimationFrame(redraw);
}

function refreshTable(node) {
  const box = node.__hopfieldChartText;
  if (box) renderTable(box, node.__hopfieldTable ?? null, node.__hopfieldText ?? "",
                       !!node.__hopfieldStale);
}

function showReport(node) {
  if (node.__hopfieldChartCanvas) {
    draw(node.__hopfieldChartCanvas, node.__hopfieldChart ?? null, !!node.__hopfieldStale);
  }
  refreshTable(node);
  node.setDirtyCanvas?.(true, true);
}

// --- Stale output: a prompt that fails (or is interrupted) before the report runs again ------

let runningPrompt = null;

function reportNodes() {
  const graph = app.graph;
  const nodes = graph?.nodes ?? graph?._nodes ?? [];
  return nodes.filter((n) => n?.type === REPORT_NODE);
}

function markStaleAfterFailure(event) {
  const failed = event?.detail?.prompt_id ?? runningPrompt;
  for (const node of reportNodes()) {
    if (!node.__hopfieldChart && !node.__hopfieldTable) continue; // nothing shown yet
    if (node.__hopfieldRanIn === failed) continue; // made in this prompt: still current
    node.__hopfieldStale = true;
    showReport(node);
  }
}

function watchRuns() {
  api.addEventListener("execution_start", (e) => { runningPrompt = e?.detail?.prompt_id; });
  api.addEventListener("execution_error", markStaleAfterFailure);
  api.addEventListener("execution_interrupted", markStaleAfterFailure);
}

// --- Circulation nodes: which α, β ------------------------------------------------------------

function widgetNamed(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

function attachPointLine(node) {
  const line = document.createElement("div");
  line.className = "hopfield-operating-point";
  line.style.cssText = "font-size:10px;line-height:1.3;color:var(--descrip-text,#999);" +
    "white-space:normal;overflow:hidden;padding:0 4px;";
  const widget = node.addDOMWidget("operating_point_used", "hopfield_point", line, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => 30,
    getMaxHeight: () => 44,
  });
  widget.serialize = false;
  node.__hopfieldPointLine = line;
  const choice = widgetNamed(node, "operating_point");
  const update = () => {
    line.textContent = node.__hopfieldPointUsed ?? pointHint(choice?.value);
  };
  if (choice) {
    const callback = choice.callback;
    choice.callback = function () {
      const result = callback?.apply(this, arguments);
      node.__hopfieldPointUsed = null; // the last run's point no longer describes the choice
      update();
      return result;
    };
  }
  for (const name of ["alpha", "beta"]) { // editing α or β means "use these"
    const w = widgetNamed(node, name);
    if (!w || !choice) continue;
    const callback = w.callback;
    w.callback = function () {
      const result = callback?.apply(this, arguments);
      if (choice.value !== CUSTOM_POINT) {
        choice.value = CUSTOM_POINT;
        choice.callback?.(CUSTOM_POINT);
      }
      return result;
    };
  }
  node.__hopfieldUpdatePoint = update;
  update();
}

app.registerExtension({
  name: "hopfield_circulation.align_chart",
  setup() {
    watchRuns();
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (CIRCULATION_NODES.includes(nodeData?.name)) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const result = onNodeCreated?.apply(this, arguments);
        attachPointLine(this);
        return result;
      };
      const onConfigure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function (info) {
        const result = onConfigure?.apply(this, arguments);
        const saved = (this.widgets ?? []).filter((w) => w.serialize !== false);
        const index = saved.findIndex((w) => w.name === "operating_point");
        if (savedBeforeOperatingPoint(info?.widgets_values, index)) {
          saved[index].value = CUSTOM_POINT; // saved before the choice existed: α, β as saved
        }
        this.__hopfieldUpdatePoint?.();
        return result;
      };
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (output) {
        onExecuted?.apply(this, arguments);
        this.__hopfieldPointUsed = pointText(output?.hopfield_operating_point);
        this.__hopfieldUpdatePoint?.();
      };
      return;
    }
    if (nodeData?.name !== REPORT_NODE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      attachReport(this);
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      // every run replaces the chart and the table: a re-queued prompt recomputes the report
      this.__hopfieldChart = readChart(output?.hopfield_align_chart);
      this.__hopfieldTable = readTable(output?.hopfield_report_table);
      this.__hopfieldText = (output?.text ?? []).join("\n");
      this.__hopfieldStale = false;
      this.__hopfieldRanIn = runningPrompt;
      showReport(this);
    };
    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      this.__hopfieldChartObserver?.disconnect();
      if (this.__hopfieldRedraw) redrawers.delete(this.__hopfieldRedraw);
      return onRemoved?.apply(this, arguments);
    };
  },
});
