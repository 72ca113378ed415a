// Unit tests for js/chart_model.js (run with `node --test tests/js`; no browser, no packages).
import assert from "node:assert/strict";
import { test } from "node:test";
import { groupBands, layout, readChart, yRange } from "../../js/chart_model.js";

const payload = {
  family: "sdxl",
  samples: [
    { label: "sample 0 (cond)",
      layers: [{ index: 50, group: "mid", align: 0.2 }, { index: 0, group: "down", align: 0.6 },
               { index: 2, group: "down", align: null }, { index: 68, group: "up", align: -0.1 }],
      groups: { down: 0.6, mid: 0.2, up: -0.1, all: 0.23 } },
  ],
};

test("readChart sorts layers, keeps gaps, rejects empty payloads", () => {
  const chart = readChart([payload]);
  assert.deepEqual(chart.samples[0].layers.map((l) => l.index), [0, 2, 50, 68]);
  assert.equal(chart.samples[0].layers[1].align, null);
  assert.equal(readChart(undefined), null);
  assert.equal(readChart([{ samples: [] }]), null);
  assert.equal(readChart({ samples: [{ label: "x", layers: [] }] }), null);
});

test("yRange includes zero and never collapses", () => {
  const [lo, hi] = yRange(readChart(payload));
  assert.ok(lo < -0.1 && hi > 0.6);
  const flat = readChart({ samples: [{ layers: [{ index: 0, group: "down", align: 0 }] }] });
  const [a, b] = yRange(flat);
  assert.ok(b - a > 0.5);
});

test("groupBands merges runs of one group", () => {
  const bands = groupBands(readChart(payload).samples[0].layers);
  assert.deepEqual(bands.map((b) => [b.group, b.start, b.end]),
                   [["down", 0, 1], ["mid", 2, 2], ["up", 3, 3]]);
});

test("layout places bands, points and group means inside the canvas", () => {
  const L = layout(readChart(payload), 300, 190);
  assert.equal(L.bands.length, 3);
  assert.ok(L.bands.every((b) => b.x0 >= L.margin.left && b.x1 <= 300 - L.margin.right + 1e-9));
  const s = L.series[0];
  assert.equal(s.points[1], null); // the missing layer breaks the line
  for (const p of s.points.filter(Boolean)) assert.ok(p[1] >= 0 && p[1] <= 190);
  assert.equal(s.means.find((m) => m.group === "mid").value, 0.2);
  assert.ok(L.series[0].points[0][1] < L.zeroY); // positive align above the zero line
});

test("y ticks never overprint", async () => {
  const { yTickValues } = await import("../../js/chart_model.js");
  assert.deepEqual(yTickValues(-1, 1), [-1, 1, 0]);
  assert.deepEqual(yTickValues(-0.04, 0.001), [-0.04, 0.001]);
});
