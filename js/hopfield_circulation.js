// Hopfield Circulation frontend: draws the per-layer Align_X chart on Stability Report nodes.
// Display-only: the widget is kept out of saved workflows and of the prompt. The layout lives in
// chart_model.js (pure, unit-tested); this file only paints it and wires it to the node.
import { app } from "../../scripts/app.js";
import { layout, readChart } from "./chart_model.js";

const REPORT_NODE = "HopfieldCirculation_StabilityReport";
const CHART_HEIGHT = 200;
const TEXT_HEIGHT = 96; // the block table of the report, scrollable

// Colours from the frontend's theme variables, so light palettes get a readable chart too.
function theme(element) {
  const css = getComputedStyle(element);
  const pick = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
  return {
    background: pick("--comfy-input-bg", "#1b1b1f"),
    text: pick("--input-text", "#ddd"),
    muted: pick("--descrip-text", "#999"),
    axis: pick("--border-color", "#555"),
  };
}

function draw(canvas, chart) {
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
}

function attachChart(node) {
  const container = document.createElement("div");
  container.className = "hopfield-circulation-chart";
  container.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;";
  const canvas = document.createElement("canvas");
  canvas.style.cssText = `width:100%;height:${CHART_HEIGHT}px;border-radius:4px;display:block;`;
  const text = document.createElement("pre");
  text.style.cssText = `margin:0;max-height:${TEXT_HEIGHT}px;overflow:auto;font-size:10px;` +
    "color:var(--input-text,#ccc);white-space:pre;flex:1 1 auto;min-height:0;";
  container.append(canvas, text);
  const redraw = () => draw(canvas, node.__hopfieldChart ?? null);
  const widget = node.addDOMWidget("align_chart", "hopfield_chart", container, {
    serialize: false, // keep it out of the prompt
    hideOnZoom: false,
    getMinHeight: () => CHART_HEIGHT + TEXT_HEIGHT + 8,
    afterResize: redraw,
  });
  widget.serialize = false; // and out of the saved workflow's widgets_values
  node.__hopfieldChartCanvas = canvas;
  node.__hopfieldChartText = text;
  if (typeof ResizeObserver !== "undefined") {
    const observer = new ResizeObserver(redraw);
    observer.observe(canvas);
    node.__hopfieldChartObserver = observer;
  }
  requestAnimationFrame(redraw);
}

app.registerExtension({
  name: "hopfield_circulation.align_chart",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== REPORT_NODE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      attachChart(this);
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      // every run replaces the chart: a re-queued prompt recomputes the report
      this.__hopfieldChart = readChart(output?.hopfield_align_chart);
      if (this.__hopfieldChartText) {
        this.__hopfieldChartText.textContent = (output?.text ?? []).join("\n");
      }
      if (this.__hopfieldChartCanvas) draw(this.__hopfieldChartCanvas, this.__hopfieldChart);
      this.setDirtyCanvas?.(true, true);
    };
    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      this.__hopfieldChartObserver?.disconnect();
      return onRemoved?.apply(this, arguments);
    };
  },
});
