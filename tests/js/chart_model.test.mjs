// Unit tests for js/chart_model.js (run with `node --test tests/js`; no browser, no packages).
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  approxTextWidth, groupBands, layout, legendLayout, readChart, spreadLabels, xLabelStep,
  yRange, yTickValues,
} from "../../js/chart_model.js";

const payload = {
  family: "sdxl",
  samples: [
    { label: "sample 0 (cond)",
      layers: [{ index: 50, group: "mid", align: 0.2 }, { index: 0, group: "down", align: 0.6 },
               { index: 2, group: "down", align: null }, { index: 68, group: "up", align: -0.1 }],
      groups: { down: 0.6, mid: 0.2, up: -0.1, all: 0.23 } },
  ],
};

// The shape the Stability Report sends for full SDXL: 70 self-attention layers at the even
// indices of the paper's 0-139 module index, Down 0-47, Mid 48-67, Up 68-139; two samples.
function sdxlPayload(samples = 2) {
  const group = (i) => (i < 48 ? "down" : i < 68 ? "mid" : "up");
  return {
    family: "sdxl",
    samples: Array.from({ length: samples }, (_, k) => {
      const layers = Array.from({ length: 70 }, (_, j) => ({
        index: 2 * j, group: group(2 * j), kind: "self",
        align: 0.6 + 0.1 * Math.sin(j / 7 + k) }));
      const mean = (g) => {
        const v = layers.filter((l) => l.group === g).map((l) => l.align);
        return v.reduce((a, b) => a + b, 0) / v.length;
      };
      return { label: `sample ${k} (cond)`, layers,
               groups: { down: mean("down"), mid: mean("mid"), up: mean("up"), all: 0.6 } };
    }),
    note: "",
  };
}

test("readChart sorts layers, keeps gaps, rejects empty payloads", () => {
  const chart = readChart([payload]);
  assert.deepEqual(chart.samples[0].layers.map((l) => l.index), [0, 2, 50, 68]);
  assert.equal(chart.samples[0].layers[1].align, null);
  assert.equal(readChart(undefined), null);
  assert.equal(readChart(null), null);
  assert.equal(readChart([]), null);
  assert.equal(readChart([{ samples: [] }]), null);
  assert.equal(readChart({ samples: [{ label: "x", layers: [] }] }), null);
  assert.equal(readChart({ samples: [null, { layers: [null, { index: "a" }] }] }), null);
});

test("readChart takes the newest payload when outputs were merged", () => {
  const older = { samples: [{ label: "old", layers: [{ index: 0, group: "down", align: 1 }] }] };
  assert.equal(readChart([older, payload]).samples[0].label, "sample 0 (cond)");
});

test("yRange includes zero and never collapses", () => {
  const [lo, hi] = yRange(readChart(payload));
  assert.ok(lo < -0.1 && hi > 0.6);
  const flat = readChart({ samples: [{ layers: [{ index: 0, group: "down", align: 0 }] }] });
  const [a, b] = yRange(flat);
  assert.ok(b - a > 0.5);
  const gaps = readChart({ samples: [{ layers: [{ index: 0, group: "down", align: null }] }] });
  assert.ok(yRange(gaps)[1] > yRange(gaps)[0]);
});

test("groupBands merges runs of one group", () => {
  const bands = groupBands(readChart(payload).samples[0].layers);
  assert.deepEqual(bands.map((b) => [b.group, b.start, b.end]),
                   [["down", 0, 1], ["mid", 2, 2], ["up", 3, 3]]);
});

test("layout places bands, points and group means inside the canvas", () => {
  const L = layout(readChart(payload), 300, 200);
  assert.equal(L.bands.length, 3);
  assert.ok(L.bands.every((b) => b.x0 >= L.margin.left && b.x1 <= 300 - L.margin.right + 1e-9));
  const s = L.series[0];
  assert.equal(s.points[1], null); // the missing layer breaks the line
  for (const p of s.points.filter(Boolean)) {
    assert.ok(p[1] >= L.margin.top && p[1] <= L.margin.top + L.plotH);
  }
  assert.equal(L.means.find((m) => m.group === "mid").value, 0.2);
  assert.ok(s.points[0][1] < L.zeroY); // positive align above the zero line
});

test("SDXL: Down/Mid/Up bands span 24/10/36 of the 70 layers, titled, means labelled", () => {
  const L = layout(readChart(sdxlPayload()), 480, 200);
  assert.deepEqual(L.bands.map((b) => [b.title, b.end - b.start + 1]),
                   [["Down", 24], ["Mid", 10], ["Up", 36]]);
  assert.ok(L.bands.every((b) => b.showTitle));
  const widths = L.bands.map((b) => b.x1 - b.x0);
  assert.ok(Math.abs(widths.reduce((a, b) => a + b, 0) - L.plotW) < 1e-6);
  assert.equal(L.means.length, 6); // one dashed mean per band and sample
  for (const band of ["down", "mid", "up"]) {
    const labels = L.means.filter((m) => m.group === band);
    assert.ok(Math.abs(labels[0].labelY - labels[1].labelY) >= 10, "mean labels overprint");
    for (const m of labels) {
      assert.ok(m.labelX >= m.x0 && m.labelX < m.x1);
      assert.ok(m.labelY > L.margin.top && m.labelY <= L.margin.top + L.plotH);
    }
  }
});

test("one series per sample, each with its own colour and legend entry", () => {
  const L = layout(readChart(sdxlPayload(3)), 480, 200);
  assert.equal(L.series.length, 3);
  assert.equal(new Set(L.series.map((s) => s.color)).size, 3);
  assert.deepEqual(L.legend.entries.map((e) => e.k), [0, 1, 2]);
  assert.ok(L.legend.y < L.bandTitleY && L.bandTitleY < L.margin.top);
});

test("x labels never overprint, however narrow the node", () => {
  for (const width of [160, 240, 480, 1200]) {
    const L = layout(readChart(sdxlPayload(1)), width, 200);
    const xs = L.xLabels.map((l) => l.x);
    for (let i = 1; i < xs.length; i++) {
      assert.ok(xs[i] - xs[i - 1] >= approxTextWidth("138") + 2, `width ${width}`);
    }
    assert.ok(L.xLabels.length >= 2);
  }
});

test("a band too narrow for its title drops the title", () => {
  const L = layout(readChart(sdxlPayload(1)), 120, 200);
  assert.equal(L.bands.find((b) => b.group === "mid").showTitle, false);
});

test("legend wraps to two rows, then summarises the rest", () => {
  const labels = Array.from({ length: 12 }, (_, k) => `sample ${k} (uncond)`);
  const legend = legendLayout(labels, 40, 300);
  assert.equal(legend.rows, 2);
  assert.ok(legend.hidden > 0);
  assert.equal(legend.entries.length + legend.hidden, 12);
  assert.ok(legend.entries.every((e) => e.row < 2));
  const short = legendLayout(["a"], 40, 300);
  assert.deepEqual([short.rows, short.hidden], [1, 0]);
});

test("spreadLabels keeps a gap and stays in range", () => {
  const ys = spreadLabels([50, 51, 52, 200], 10, 20, 100);
  const sorted = [...ys].sort((a, b) => a - b);
  for (let i = 1; i < sorted.length; i++) assert.ok(sorted[i] - sorted[i - 1] >= 10 - 1e-9);
  assert.ok(ys.every((y) => y >= 20 && y <= 100));
  assert.deepEqual(spreadLabels([], 10, 0, 10), []);
});

test("xLabelStep grows as the slots shrink", () => {
  assert.equal(xLabelStep(10, 1000, 20), 1);
  assert.ok(xLabelStep(70, 200, 20) > 1);
});

test("re-layout at another size keeps the same content (resize)", () => {
  const chart = readChart(sdxlPayload());
  const a = layout(chart, 300, 200), b = layout(chart, 900, 200);
  assert.equal(a.series[0].points.length, b.series[0].points.length);
  assert.deepEqual(a.bands.map((x) => x.group), b.bands.map((x) => x.group));
  assert.ok(b.plotW > a.plotW);
});

test("y ticks never overprint", () => {
  assert.deepEqual(yTickValues(-1, 1), [-1, 1, 0]);
  assert.deepEqual(yTickValues(-0.04, 0.001), [-0.04, 0.001]);
});
