// Hopfield Circulation frontend: draws the per-layer Align_X chart on Stability Report nodes.
// Display-only: the widget is kept out of saved workflows and of the prompt.
import { app } from "../../scripts/app.js";
import { layout, readChart } from "./chart_model.js";

const REPORT_NODE = "HopfieldCirculation_StabilityReport";
const CHART_HEIGHT = 190;

function draw(canvas, chart) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(120, canvas.clientWidth || canvas.parentElement?.clientWidth || 320);
  const height = CHART_HEIGHT;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  if (!ctx) return;
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.fillStyle = "#1b1b1f";
  ctx.fillRect(0, 0, width, height);
  ctx.font = "10px sans-serif";
  if (!chart) {
    ctx.fillStyle = "#aaa";
    ctx.fillText("Align_X per layer appears here after a run.", 10, height / 2);
    return;
  }
  const L = layout(chart, width, height);
  for (const band of L.bands) {
    ctx.fillStyle = band.color;
    ctx.fillRect(band.x0, L.margin.top, band.x1 - band.x0, L.plotH);
    ctx.fillStyle = "#ccc";
    ctx.fillText(band.group, band.x0 + 3, L.margin.top + 10);
  }
  ctx.strokeStyle = "#666";
  ctx.beginPath();
  ctx.moveTo(L.margin.left, L.zeroY);
  ctx.lineTo(L.margin.left + L.plotW, L.zeroY);
  ctx.stroke();
  ctx.fillStyle = "#aaa";
  for (const t of L.yTicks) ctx.fillText(t.v.toFixed(2), 2, t.y + 3);
  const step = Math.max(1, Math.ceil(L.xLabels.length / 12));
  L.xLabels.forEach((l, i) => { if (i % step === 0) ctx.fillText(l.text, l.x - 6, height - 16); });
  ctx.fillText("layer index", L.margin.left + L.plotW / 2 - 24, height - 4);
  L.series.forEach((s, k) => {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let pen = false;
    for (const p of s.points) {
      if (!p) { pen = false; continue; }
      if (pen) ctx.lineTo(p[0], p[1]); else ctx.moveTo(p[0], p[1]);
      pen = true;
    }
    ctx.stroke();
    for (const m of s.means) {
      if (m.y === null) continue;
      ctx.setLineDash([4, 3]);
      ctx.beginPath();
      ctx.moveTo(m.x0, m.y);
      ctx.lineTo(m.x1, m.y);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = s.color;
      ctx.fillText(m.value.toFixed(3), m.x0 + 3, m.y - 3 - 10 * k);
    }
    ctx.fillStyle = s.color;
    ctx.fillText(s.label, L.margin.left + L.plotW - 110, L.margin.top + 12 + 11 * k);
  });
}

function attachChart(node) {
  const container = document.createElement("div");
  container.className = "hopfield-circulation-chart";
  container.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;";
  const canvas = document.createElement("canvas");
  canvas.style.cssText = `width:100%;height:${CHART_HEIGHT}px;border-radius:4px;`;
  const text = document.createElement("pre");
  text.style.cssText = "margin:0;max-height:120px;overflow:auto;font-size:10px;color:#ccc;white-space:pre;";
  container.append(canvas, text);
  const widget = node.addDOMWidget("align_chart", "hopfield_chart", container, {
    serialize: false, // keep it out of the prompt
    hideOnZoom: false,
    getMinHeight: () => CHART_HEIGHT + 40,
    afterResize: () => draw(canvas, node.__hopfieldChart ?? null),
  });
  widget.serialize = false; // and out of the saved workflow's widgets_values
  node.__hopfieldChartCanvas = canvas;
  node.__hopfieldChartText = text;
  if (typeof ResizeObserver !== "undefined") {
    new ResizeObserver(() => draw(canvas, node.__hopfieldChart ?? null)).observe(canvas);
  }
  requestAnimationFrame(() => draw(canvas, null));
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
      this.__hopfieldChart = readChart(output?.hopfield_align_chart);
      if (this.__hopfieldChartText) this.__hopfieldChartText.textContent = (output?.text ?? []).join("\n");
      if (this.__hopfieldChartCanvas) draw(this.__hopfieldChartCanvas, this.__hopfieldChart);
      this.setDirtyCanvas?.(true, true);
    };
  },
});
