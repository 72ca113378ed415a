"""The sweep's input: an API-format workflow with named placeholders, and the job grid.

The workflow is what ComfyUI's "Export (API)" writes ({node_id: {class_type, inputs}}), with
placeholders such as "{{seed}}" wherever the sweep puts a value. Every mismatch between the
placeholders and the values given is an error before anything is queued, naming the node and
input, so a typo never costs a night of GPU time.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .manifest import run_id

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")
SWEPT = ("prompt", "seed", "alpha", "beta")  # the placeholders with their own flags
FLAG_OF = {"prompt": "--prompts FILE", "seed": "--seeds", "alpha": "--alpha", "beta": "--beta"}
BUILT_IN = "run_id"  # always available: the job's stable id
CIRCULATION_NODES = ("HopfieldCirculation_SkewCirculation",
                     "HopfieldCirculation_AdaptiveCirculation")
CUSTOM_POINT = "custom α, β"  # nodes/operating_points.py CUSTOM: steer with the α, β inputs
REPORT_NODE = "HopfieldCirculation_StabilityReport"


class SweepError(ValueError):
    """Bad input, found before anything is queued; the message names the file and spot."""


@dataclass(frozen=True)
class Template:
    graph: dict
    source: str

    @classmethod
    def load(cls, path: Path) -> Template:
        try:
            graph = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise SweepError(f"{path}: cannot read the workflow: {exc}") from exc
        if isinstance(graph, dict) and "nodes" in graph and "links" in graph:
            raise SweepError(f"{path}: this is a UI workflow; save it with ComfyUI's "
                             "'Export (API)' instead")
        bad = [k for k, node in (graph.items() if isinstance(graph, dict) else [])
               if not (isinstance(node, dict) and "class_type" in node and "inputs" in node)]
        if not isinstance(graph, dict) or not graph or bad:
            raise SweepError(f"{path}: not an API-format workflow ({{node_id: {{class_type, "
                             f"inputs}}}}); offending node ids: {bad[:5]}")
        return cls(_custom_points(graph), str(path))

    def uses(self) -> dict[str, list[str]]:
        """Placeholder name -> where it appears, for error messages."""
        found: dict[str, list[str]] = {}
        for node_id, node in self.graph.items():
            for name, value in node["inputs"].items():
                where = f"node {node_id} ({node['class_type']}) input '{name}'"
                for text in _strings(value):
                    for match in PLACEHOLDER.finditer(text):
                        found.setdefault(match.group(1), []).append(where)
        return found

    def report_warnings(self) -> list[str]:
        """What would leave the manifest without stability values (images-only is allowed)."""
        reports = {k: n for k, n in self.graph.items() if n["class_type"] == REPORT_NODE}
        if not reports:
            return [f"{self.source}: no Stability Report node ({REPORT_NODE}); the manifest "
                    "will hold no stability values"]
        return [f"{self.source}: node {k} (Stability Report) has save_file off; turn it on, "
                "or the manifest will hold no stability values"
                for k, n in reports.items() if n["inputs"].get("save_file") is not True]

    def digest(self) -> str:
        canonical = json.dumps(self.graph, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def fill(self, values: dict) -> dict:
        """The workflow with every placeholder replaced: a whole-string placeholder by the typed
        value (an int seed stays an int), one inside a longer string textually."""
        return {node_id: {**node, "inputs": _substitute(node["inputs"], values)}
                for node_id, node in self.graph.items()}


def _custom_points(graph: dict) -> dict:
    """Circulation nodes whose α or β is a placeholder steer with those values: their
    ``operating_point`` is set to the custom choice (a workflow exported from today's UI carries
    "paper point for this model", which would ignore the swept α and β)."""
    for node in graph.values():
        inputs = node["inputs"]
        if node["class_type"] in CIRCULATION_NODES and any(
                PLACEHOLDER.search(text) for name in ("alpha", "beta")
                for text in _strings(inputs.get(name))):
            inputs["operating_point"] = CUSTOM_POINT
    return graph


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)


def _substitute(value, values: dict):
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value)
        if whole:
            return values[whole.group(1)]
        return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), value)
    if isinstance(value, list):
        return [_substitute(item, values) for item in value]
    if isinstance(value, dict):
        return {key: _substitute(item, values) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class Job:
    run_id: str
    prompt_index: int | None
    values: dict  # placeholder name -> value (run_id not included)


def read_prompts(path: Path, column: str = "prompt") -> list[str]:
    """One prompt per line, or a CSV's `column` (COCO captions exported as CSV)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise SweepError(f"{path}: cannot read the prompt file: {exc}") from exc
    if path.suffix.lower() != ".csv":
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        reader = csv.DictReader(text.splitlines())
        if column not in (reader.fieldnames or []):
            raise SweepError(f"{path}: no '{column}' column (columns: {reader.fieldnames}); "
                             "pass --prompt-column")
        prompts = []
        for row in reader:
            prompt = (row[column] or "").strip()
            if not prompt:
                raise SweepError(f"{path}:{reader.line_num}: empty '{column}'")
            prompts.append(prompt)
    if not prompts:
        raise SweepError(f"{path}: no prompts in the file")
    return prompts


def parse_seeds(text: str) -> list[int]:
    """'0-7', '1,5,9' or a mix ('0-3,10')."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise SweepError(f"--seeds '{text}': '{part}' is not a seed or a range like 0-7")
        first = int(match.group(1))
        seeds += range(first, int(match.group(2) or first) + 1)
    if not seeds:
        raise SweepError(f"--seeds '{text}': no seeds")
    return list(dict.fromkeys(seeds))


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError as exc:
        raise SweepError(f"{flag} '{text}': expected numbers separated by commas") from exc
    if not all(math.isfinite(v) for v in values):
        raise SweepError(f"{flag} '{text}': values must be finite")
    if not values:
        raise SweepError(f"{flag} '{text}': no values")
    return list(dict.fromkeys(values))


def parse_assignments(items: list[str]) -> dict[str, object]:
    """--set name=value; numbers and true/false are typed, the rest stays text."""
    values: dict[str, object] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise SweepError(f"--set '{item}': expected name=value")
        if name in (*SWEPT, BUILT_IN):
            raise SweepError(f"--set {name}: use {FLAG_OF.get(name, 'nothing (it is built in)')}")
        if name in values:
            raise SweepError(f"--set {name} given twice")
        values[name] = _typed(raw)
    return values


def _typed(raw: str) -> object:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def plan_jobs(template: Template, prompts: list[str] | None, seeds: list[int] | None,
              alphas: list[float] | None, betas: list[float] | None,
              extras: dict[str, object]) -> list[Job]:
    """Every job of the grid, in prompt-major order, after checking that the workflow's
    placeholders and the values given match exactly."""
    axes = {"prompt": prompts, "seed": seeds, "alpha": alphas, "beta": betas}
    given = {name for name, values in axes.items() if values is not None} | set(extras)
    _check_placeholders(template, given)
    digest = template.digest()
    jobs: dict[str, Job] = {}
    prompt_list = list(enumerate(prompts)) if prompts is not None else [(None, None)]
    for index, prompt in prompt_list:
        for seed in seeds if seeds is not None else [None]:
            for alpha in alphas if alphas is not None else [None]:
                for beta in betas if betas is not None else [None]:
                    swept = {"prompt": prompt, "seed": seed, "alpha": alpha, "beta": beta}
                    values = {k: v for k, v in swept.items() if axes[k] is not None} | extras
                    job = Job(run_id(digest, values), index, values)
                    jobs.setdefault(job.run_id, job)  # a repeated prompt is one job
    return list(jobs.values())


def _check_placeholders(template: Template, given: set[str]) -> None:
    used = template.uses()
    problems = [f"{{{{{name}}}}} in {', '.join(where)} has no value: pass "
                f"{FLAG_OF.get(name, f'--set {name}=VALUE')}"
                for name, where in sorted(used.items()) if name not in given | {BUILT_IN}]
    problems += [f"{FLAG_OF[name].split()[0] if name in FLAG_OF else f'--set {name}'} given, "
                 f"but the workflow has no {{{{{name}}}}} placeholder"
                 for name in sorted(given - set(used))]
    if problems:
        raise SweepError(f"{template.source}:\n  " + "\n  ".join(problems))
