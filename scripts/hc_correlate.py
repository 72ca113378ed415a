#!/usr/bin/env python3
"""The paper's tables 1, 2 and 3b from a sweep's manifest and your own per-image scores.

    python scripts/hc_correlate.py tables --manifest sweep/manifest.jsonl \\
        --scores imagereward.csv --scores aesthetic.csv --out-dir sweep/tables
    python scripts/hc_correlate.py score --scorer clipscore --weights clip-vit-b-32/ \\
        --manifest sweep/manifest.jsonl --output sweep/clipscore.csv

A score file is a CSV with a `file` column (image path or name) and one column per metric.
Exit status: 0 done, 2 bad input or a scorer that is not available here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from research.correlate import CorrelateError, load_dataset  # noqa: E402
from research.render import render_all, write_csv  # noqa: E402
from research.scorers import (  # noqa: E402
    SCORERS,
    ScorerOptions,
    ScorerUnavailable,
    load_scorer,
    manifest_items,
    write_scores,
)
from research.tables import Options  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    tables = commands.add_parser("tables", help="print tables 1, 2 and 3b")
    tables.add_argument("--manifest", type=Path, required=True, help="the sweep's manifest.jsonl")
    tables.add_argument("--scores", type=Path, action="append", required=True,
                        help="a score CSV (file, metric...); repeatable")
    tables.add_argument("--metrics", help="comma-separated metric columns to use (default all)")
    tables.add_argument("--bootstrap", type=int, default=1000, help="resamples per interval")
    tables.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    tables.add_argument("--fraction", type=float, default=0.2,
                        help="stratum / worst-subset size (default 0.2: 20 %%)")
    tables.add_argument("--block", default="all",
                        help="table 2's Align_X block (down, mid, up, all; SD3 early, ...)")
    tables.add_argument("--rows", choices=("baseline", "all"), default="baseline",
                        help="rows of tables 1 and 2 (default: baseline, as in the paper)")
    tables.add_argument("--baseline", default="auto",
                        help="baseline rows: 'auto' (α = 1 or β = 0) or e.g. alpha=1,beta=0")
    tables.add_argument("--lower-is-better", action="append", default=[], metavar="METRIC",
                        help="a metric whose worst samples are its highest (repeatable)")
    tables.add_argument("--out-dir", type=Path, help="also write table*.csv and tables.md here")

    score = commands.add_parser("score", help="write a score CSV with one of the adapters")
    score.add_argument("--scorer", required=True, choices=sorted(SCORERS))
    score.add_argument("--weights", type=Path, required=True,
                       help="the scorer's weights (file or folder); never downloaded")
    score.add_argument("--manifest", type=Path, required=True)
    score.add_argument("--output", type=Path, help="default: next to the manifest, "
                       "scores_<scorer>.csv")
    score.add_argument("--clip-model", default="ViT-B-32",
                       help="open_clip architecture of a clipscore checkpoint file")
    score.add_argument("--clip-weights", type=Path,
                       help="aesthetic: the CLIP ViT-L/14 checkpoint it was fit on")
    return parser.parse_args(argv)


def run_tables(args: argparse.Namespace) -> None:
    if not 0 < args.fraction <= 0.5:
        raise CorrelateError(f"--fraction {args.fraction}: expected a value in (0, 0.5]")
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    data = load_dataset(args.manifest, args.scores, metrics)
    options = Options(n_boot=args.bootstrap, seed=args.seed, fraction=args.fraction,
                      block=args.block, lower_is_better=frozenset(args.lower_is_better))
    markdown, records = render_all(data, options, args.rows, args.baseline)
    print(markdown)
    if args.out_dir:
        for name, rows in records.items():
            write_csv(args.out_dir / name, rows)
        (args.out_dir / "tables.md").write_text(markdown, encoding="utf-8")
        print(f"hc_correlate: tables written to {args.out_dir}", file=sys.stderr)


def run_score(args: argparse.Namespace) -> None:
    options = ScorerOptions(clip_model=args.clip_model, clip_weights=args.clip_weights)
    items = manifest_items(args.manifest)
    if not items:
        raise CorrelateError(f"{args.manifest}: no rows with images")
    score = load_scorer(args.scorer, args.weights, options)
    values = score([item for _, item in items])
    output = args.output or args.manifest.parent / f"scores_{args.scorer}.csv"
    write_scores(output, args.scorer, [file for file, _ in items], values)
    print(f"hc_correlate: {len(values)} images scored; {output}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="hc_correlate: %(message)s")
    try:
        (run_tables if args.command == "tables" else run_score)(args)
    except (CorrelateError, ScorerUnavailable, ValueError) as exc:
        print(f"hc_correlate: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
