#!/usr/bin/env python3
"""Run a prompt × seed × α × β sweep of an API-format workflow on one or several ComfyUI servers.

    python scripts/hc_sweep.py workflow_api.json --prompts captions.txt --seeds 0-7 \\
        --alpha 1.0,1.05,1.1 --beta 0,3 --server http://127.0.0.1:8188 --out sweep/

Rerun the same command to resume: finished samples (in OUT/manifest.jsonl) are skipped.
Exit status: 0 all done, 1 some jobs failed (OUT/failures.jsonl), 2 bad input, 3 no server
left (the jobs that remain are listed), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from research.manifest import Manifest  # noqa: E402
from research.sweep import SweepSettings, pending_jobs, run_sweep  # noqa: E402
from research.workflow import (  # noqa: E402
    SweepError,
    Template,
    parse_assignments,
    parse_floats,
    parse_seeds,
    plan_jobs,
    read_prompts,
)

REMAINING_SHOWN = 20


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workflow", type=Path, help="API-format workflow JSON with "
                        "placeholders such as \"{{prompt}}\", \"{{seed}}\", \"{{alpha}}\"")
    parser.add_argument("--prompts", type=Path, help="one prompt per line, or a CSV file")
    parser.add_argument("--prompt-column", default="prompt", help="the CSV's prompt column")
    parser.add_argument("--seeds", help="e.g. 0-7 or 1,5,9")
    parser.add_argument("--alpha", help="values of {{alpha}}, e.g. 1.0,1.05,1.1")
    parser.add_argument("--beta", help="values of {{beta}}, e.g. 0,3")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="any other placeholder (repeatable)")
    parser.add_argument("--server", action="append", required=True, metavar="URL",
                        help="a ComfyUI server, e.g. http://127.0.0.1:8188 (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--retries", type=int, default=2,
                        help="further tries of a job a server failed (default 2)")
    parser.add_argument("--job-timeout", type=float, default=600.0,
                        help="seconds one job may take on a server (default 600)")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between polls")
    parser.add_argument("--branch", default="cond", choices=("cond", "uncond"),
                        help="CFG branch whose report samples go into the manifest")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the inputs and print the plan; queue nothing")
    args = parser.parse_args(argv)
    if args.retries < 0 or args.job_timeout <= 0 or args.poll <= 0:
        parser.error("--retries must be ≥ 0, --job-timeout and --poll > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="hc_sweep: %(message)s")
    try:
        template = Template.load(args.workflow)
        jobs = plan_jobs(
            template,
            read_prompts(args.prompts, args.prompt_column) if args.prompts else None,
            parse_seeds(args.seeds) if args.seeds else None,
            parse_floats(args.alpha, "--alpha") if args.alpha else None,
            parse_floats(args.beta, "--beta") if args.beta else None,
            parse_assignments(args.set),
        )
    except SweepError as exc:
        print(f"hc_sweep: {exc}", file=sys.stderr)
        return 2
    for warning in template.report_warnings():
        print(f"hc_sweep: warning: {warning}", file=sys.stderr)
    manifest = Manifest(args.out)
    todo = pending_jobs(jobs, manifest)
    print(f"hc_sweep: {len(jobs)} jobs, {len(jobs) - len(todo)} already in {manifest.path}, "
          f"{len(todo)} to run on {len(args.server)} server(s)", file=sys.stderr)
    if args.dry_run:
        return 0
    if not todo:
        print(f"hc_sweep: nothing to do; table: {manifest.write_csv()}", file=sys.stderr)
        return 0
    settings = SweepSettings(retries=args.retries, job_timeout=args.job_timeout,
                             poll_interval=args.poll, branch=args.branch)
    try:
        outcome = run_sweep(template, todo, args.server, args.out, settings)
    except KeyboardInterrupt:
        print(f"hc_sweep: interrupted; finished samples are in {manifest.path}; rerun the "
              "same command to resume", file=sys.stderr)
        return 130
    print(f"hc_sweep: {outcome.finished} finished; manifest: {manifest.path}, "
          f"table: {manifest.write_csv()}", file=sys.stderr)
    if outcome.remaining:
        listed = "\n  ".join(f"{job.run_id} {job.values}" for job in
                             outcome.remaining[:REMAINING_SHOWN])
        more = len(outcome.remaining) - REMAINING_SHOWN
        print(f"hc_sweep: no server is reachable any more; {len(outcome.remaining)} jobs "
              f"remain (rerun the same command to resume):\n  {listed}"
              + (f"\n  ... and {more} more" if more > 0 else ""), file=sys.stderr)
        return 3
    if outcome.failed:
        print(f"hc_sweep: {len(outcome.failed)} jobs failed after {args.retries + 1} tries; "
              f"see {manifest.failures_path} (a rerun tries them again)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
