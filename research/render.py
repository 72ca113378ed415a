"""Tables 1, 2 and 3b as markdown (for reading and pasting) and as long-format CSV rows (for
plotting and further analysis): one CSV row per number, with its interval and n."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from .correlate import CorrelateError, Dataset, baseline_rule, one_per_pair
from .stats import CI_LEVEL, Estimate
from .tables import MEASURES, Correlation, Options, PairedDelta, Strata, table1, table2, table3b


def _signed(value: float, digits: str = ".3f") -> str:
    return "–" if not math.isfinite(value) else format(value, "+" + digits)


def _interval(e: Estimate, digits: str) -> str:
    if not math.isfinite(e.low):
        return ""
    return f" [{_signed(e.low, digits)}, {_signed(e.high, digits)}]"


def _cell(e: Estimate, digits: str, row_n: int | None = None) -> str:
    if e.n == 0:
        return "no pairs"
    n = f" (n={e.n})" if e.n != row_n else ""
    return _signed(e.value, digits) + _interval(e, digits) + n


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _setting(setting: tuple) -> str:
    alpha, beta = setting
    return " ".join(f"{name}={value:g}" if isinstance(value, int | float) else f"{name}=–"
                    for name, value in (("α", alpha), ("β", beta)))


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g} %"


def table1_markdown(cells: list[Correlation], rows_label: str) -> str:
    labels = [label for label, _, _ in MEASURES]
    grouped: dict[tuple[str, str], dict[str, Estimate]] = {}
    for c in cells:
        grouped.setdefault((c.metric, c.block), {})[c.measure] = c.estimate
    body = []
    for (metric, block), estimates in grouped.items():
        row_n = max(e.n for e in estimates.values())
        body.append([metric, block, *(_cell(estimates[m], ".3f", row_n) for m in labels),
                     str(row_n)])
    title = (f"**Table 1.** Spearman ρ between stability measures and metrics "
             f"({_percent(CI_LEVEL)} bootstrap CI), {rows_label}.")
    return title + "\n\n" + _markdown(["metric", "block", *labels, "n"], body)


def table1_csv(cells: list[Correlation]) -> list[dict]:
    return [{"metric": c.metric, "block": c.block, "measure": c.measure, "rho": c.estimate.value,
             "ci_low": c.estimate.low, "ci_high": c.estimate.high, "n": c.estimate.n}
            for c in cells]


def table2_markdown(strata: Strata, fraction: float, rows_label: str) -> str:
    columns = list(strata.contrasts)
    mean = {(m.column, m.stratum): m for m in strata.means}
    body = []
    for stratum, name in (("all", "all"), ("top", f"top {_percent(fraction)} (stable)"),
                          ("bottom", f"bottom {_percent(fraction)} (unstable)")):
        cells = []
        for column in columns:
            m, overall = mean[(column, stratum)], mean[(column, "all")]
            text = "–" if not m.n else format(m.mean, ".4g")
            if stratum != "all" and m.n and overall.n:
                text += f" ({_signed(m.mean - overall.mean, '.3g')})"
            cells.append(text)
        size = strata.ranked if stratum == "all" else strata.size
        body.append([name, str(size), *cells])
    body.append(["top − bottom", "",
                 *(_cell(strata.contrasts[c], ".3g", strata.size * 2) for c in columns)])
    title = (f"**Table 2.** Means by Align_X stratum (block {strata.block}; top and bottom "
             f"{_percent(fraction)} of {strata.ranked} {rows_label}); in brackets the "
             f"difference from all samples; last row top − bottom with its "
             f"{_percent(CI_LEVEL)} bootstrap CI.")
    return title + "\n\n" + _markdown(["stratum", "n", *columns], body)


def table2_csv(strata: Strata) -> list[dict]:
    overall = {m.column: m.mean for m in strata.means if m.stratum == "all"}
    records = [{"block": strata.block, "stratum": m.stratum, "column": m.column,
                "mean": m.mean, "difference": m.mean - overall[m.column],
                "ci_low": "", "ci_high": "", "n": m.n} for m in strata.means]
    records += [{"block": strata.block, "stratum": "top_minus_bottom", "column": column,
                 "mean": "", "difference": e.value, "ci_low": e.low, "ci_high": e.high,
                 "n": e.n} for column, e in strata.contrasts.items()]
    return records


def table3b_markdown(cells: list[PairedDelta], fraction: float) -> str:
    title = (f"**Table 3b.** Paired Δ (steered − baseline, same prompt, seed and batch item) on "
             f"the worst {_percent(fraction)} of baseline samples by each metric "
             f"({_percent(CI_LEVEL)} bootstrap CI).")
    if not cells:
        return title + "\n\nNo steered rows: the manifest holds only baseline settings."
    parts = [title]
    for target in dict.fromkeys(c.target for c in cells):
        mine = [c for c in cells if c.target == target]
        settings = list(dict.fromkeys(c.setting for c in mine))
        heading = f"Worst {_percent(fraction)} by {target}: {mine[0].worst} baseline samples"
        if not mine[0].worst:
            parts.append(f"{heading}: no baseline sample has a {target} score, so no pairs.")
            continue
        if not any(c.estimate.n for c in mine):
            parts.append(f"{heading}; no steered sample pairs with them (no pairs for any "
                         "setting).")
            continue
        body = []
        for metric in dict.fromkeys(c.metric for c in mine):
            row = {c.setting: c.estimate for c in mine if c.metric == metric}
            body.append([f"Δ {metric}", *(_cell(row[s], ".3g") for s in settings)])
        parts.append(heading + "\n\n" + _markdown(["", *map(_setting, settings)], body))
    return "\n\n".join(parts)


def table3b_csv(cells: list[PairedDelta]) -> list[dict]:
    return [{"target": c.target, "alpha": c.setting[0], "beta": c.setting[1],
             "metric": c.metric, "mean_delta": c.estimate.value, "ci_low": c.estimate.low,
             "ci_high": c.estimate.high, "n_pairs": c.estimate.n, "n_worst": c.worst}
            for c in cells]


def write_csv(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]) if records else ["empty"])
        writer.writeheader()
        writer.writerows(records)


def render_all(data: Dataset, options: Options, rows: str = "baseline",
               baseline: str = "auto") -> tuple[str, dict[str, list[dict]]]:
    """All three tables: markdown text and CSV records by file name. Tables 1 and 2 use the
    baseline rows (as in the paper) unless rows is "all"; table 3b pairs steered rows with
    the baseline rows."""
    is_baseline = baseline_rule(baseline)
    base = one_per_pair([row for row in data.rows if is_baseline(row)])
    steered = [row for row in data.rows if not is_baseline(row)]
    if rows == "all":
        selected, label, kind = data.rows, f"all {len(data.rows)} samples", "samples"
    elif base:
        selected, kind = base, "baseline samples"
        label = f"{len(base)} baseline samples (--baseline {baseline})"
    else:
        raise CorrelateError(f"no baseline rows (--baseline {baseline}); pass --rows all to "
                             "compute tables 1 and 2 over every row, or name the baseline")
    correlations = table1(data, selected, options)
    strata = table2(data, selected, options)
    markdown = [table1_markdown(correlations, label),
                table2_markdown(strata, options.fraction, kind)]
    records = {"table1.csv": table1_csv(correlations), "table2.csv": table2_csv(strata)}
    if base:
        deltas = table3b(data, base, steered, options)
        markdown.append(table3b_markdown(deltas, options.fraction))
        records["table3b.csv"] = table3b_csv(deltas)
    else:
        markdown.append(f"**Table 3b.** No baseline rows (--baseline {baseline}) to pair with.")
    return "\n\n".join(markdown) + "\n", records
