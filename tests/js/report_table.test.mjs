// Unit tests for the report table and the circulation nodes' line in js/chart_model.js.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  CUSTOM_POINT, EMPTY_CELL, PAPER_POINT, formatMeasure, pointHint, pointText, readTable,
  savedBeforeOperatingPoint, tableFontPx,
} from "../../js/chart_model.js";

const table = {
  headline: "Hopfield stability (SD3), run 2 of this Stability Probe, 3 steps recorded.",
  columns: ["E_X", "r_X", "Align_X", "eta_M"],
  samples: [{ label: "sample 0 (cond)", rows: [
    { block: "early", title: "early", values: [0.71512, 0.5113, -0.02391, 0.0512] },
    { block: "late", title: "late", values: [null, null, null, null] },
  ] }],
  notes: ["Circulation in this run: Skew Circulation α 0.95, β 3", "Stable retrieval: ..."],
};

test("empty groups show a dash, never NaN", () => {
  const t = readTable([table]);
  assert.deepEqual(t.samples[0].rows[1].cells, [EMPTY_CELL, EMPTY_CELL, EMPTY_CELL, EMPTY_CELL]);
  assert.equal(formatMeasure(NaN, 0), EMPTY_CELL);
  assert.equal(formatMeasure(undefined, 2), EMPTY_CELL);
  assert.ok(!JSON.stringify(t).includes("NaN"));
});

test("measures keep their formats; minus signs are real minus signs", () => {
  const cells = readTable(table).samples[0].rows[0].cells;
  assert.deepEqual(cells, ["0.7151", "0.511", "−0.0239", "0.051"]);
});

test("readTable keeps the newest payload and rejects unusable ones", () => {
  assert.equal(readTable(undefined), null);
  assert.equal(readTable([{ samples: [] , columns: [] }]), null);
  assert.equal(readTable({ samples: [{ rows: [] }] }), null); // no columns
  const older = { ...table, headline: "old" };
  assert.equal(readTable([older, table]).headline, table.headline);
  assert.deepEqual(readTable(table).notes, table.notes);
});

test("the table's font follows the node's width within 8-12 px", () => {
  assert.equal(tableFontPx(0), 8);
  assert.equal(tableFontPx(200), 8);
  assert.equal(tableFontPx(340), 10);
  assert.equal(tableFontPx(560), 12);
  assert.equal(tableFontPx(2000), 12);
  // the five columns fit: 5 cells of about 8 characters at ~0.6 em, plus the block name
  for (const width of [240, 340, 520, 900]) {
    assert.ok(6 * 8 * 0.6 * tableFontPx(width) <= width, `width ${width}`);
  }
});

test("the circulation line says which α, β a node uses", () => {
  assert.match(pointHint(PAPER_POINT), /SD3 α 0\.95 β 3/);
  assert.match(pointHint(CUSTOM_POINT), /α and β above/);
  assert.equal(pointText([{ text: "α 0.95, β 3: the paper's SD3 point" }]),
               "Last run: α 0.95, β 3: the paper's SD3 point");
  assert.equal(pointText(undefined), null);
});

test("workflows saved before operating_point existed keep their α, β", () => {
  assert.equal(savedBeforeOperatingPoint([1.2, 5, 0, 1, "all", "both", "value"], 7), true);
  assert.equal(savedBeforeOperatingPoint([1.2, 5, 0, 1, "all", "both", "value", PAPER_POINT], 7),
               false);
  assert.equal(savedBeforeOperatingPoint(undefined, 7), false); // a new node: the default
  assert.equal(savedBeforeOperatingPoint([1, 2], -1), false);
});
