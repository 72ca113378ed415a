"""A finished job's files, downloaded into the sweep's folder, and its manifest rows.

Images saved by the workflow (type "output") and the Stability Report's .safetensors file are
fetched through /view; the report's per-block values become the rows' stability columns, one
row per batch item.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path

from .comfy_api import ComfyClient, JobFailed
from .manifest import read_report
from .workflow import REPORT_NODE, SWEPT, Job

log = logging.getLogger("hc_research")


def collect(client: ComfyClient, graph: dict, entry: dict, job: Job, prompt_id: str,
            out_dir: Path, branch: str) -> list[dict]:
    """Download a finished job's images and report into out_dir; its manifest rows (one per
    batch item)."""
    outputs = entry.get("outputs") or {}
    images = _save_images(client, outputs, job.run_id, out_dir)
    report = _save_report(client, graph, outputs, job.run_id, out_dir)
    samples = read_report(out_dir / report, branch) if report else None
    if report and not samples.values:
        log.warning("%s: the report has no '%s' samples; no stability values", report, branch)
    batch = max([len(paths) for paths in images] + [len(samples.values) if samples else 0, 1])
    rows = []
    for b in range(batch):
        rows.append({
            "run_id": job.run_id, "batch_index": b, "batch_size": batch,
            "prompt_index": job.prompt_index,
            **{k: job.values.get(k) for k in SWEPT},
            "params": {k: v for k, v in job.values.items() if k not in SWEPT},
            "server": client.url, "prompt_id": prompt_id,
            "images": [paths[b] for paths in images if b < len(paths)], "report": report,
            "family": samples.family if samples else None,
            "groups": samples.groups if samples else [],
            "sample": samples.labels.get(b) if samples else None,
            **(samples.values.get(b, {}) if samples else {}),
        })
    return rows


def _save_images(client: ComfyClient, outputs: dict, rid: str, out_dir: Path) -> list[list[str]]:
    """Saved (type 'output') images per output node, as paths relative to out_dir; previews
    (type 'temp') are not results and are left on the server."""
    per_node = []
    for node_id, output in sorted(outputs.items()):
        paths = []
        for i, image in enumerate(output.get("images") or []):
            if image.get("type") != "output":
                continue
            data = client.download(image["filename"], image.get("subfolder", ""))
            relative = f"images/{rid}-{node_id}-{i:02d}{Path(image['filename']).suffix}"
            _write_atomic(out_dir / relative, data)
            paths.append(relative)
        if paths:
            per_node.append(paths)
    return per_node


def _save_report(client: ComfyClient, graph: dict, outputs: dict, rid: str,
                 out_dir: Path) -> str | None:
    """The Stability Report's file, found from its "Saved: <path>" line: through /view (the
    path is under the server's output folder), else copied when this machine can read it."""
    for node_id in (k for k, n in graph.items() if n["class_type"] == REPORT_NODE):
        saved = _saved_path((outputs.get(node_id) or {}).get("text") or [])
        if saved is None:
            continue
        relative = f"reports/{rid}.safetensors"
        prefix = graph[node_id]["inputs"].get("filename_prefix", "")
        subfolder = _subfolder(prefix) if isinstance(prefix, str) else ""
        name = re.split(r"[\\/]", saved)[-1]
        try:
            _write_atomic(out_dir / relative, client.download(name, subfolder))
        except JobFailed as exc:
            if not Path(saved).is_file():
                log.warning("%s: report not retrievable (%s; %s is not on this machine)",
                            rid, exc, saved)
                return None
            _write_atomic(out_dir / relative, Path(saved).read_bytes())
        return relative
    return None


def _saved_path(texts: list[str]) -> str | None:
    for text in texts:
        match = re.search(r"^Saved: (.+\.safetensors)\s*$", str(text), re.MULTILINE)
        if match:
            return match.group(1)
    return None


def _subfolder(filename_prefix: str) -> str:
    """ComfyUI's get_save_image_path puts files in dirname(normpath(prefix))."""
    directory = posixpath.dirname(posixpath.normpath(filename_prefix.replace("\\", "/")))
    return "" if directory == "." else directory


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)
