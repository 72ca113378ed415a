"""The few ComfyUI HTTP endpoints a sweep needs, stdlib only, every call bounded in time.

POST /prompt queues a job, GET /history/{id} says when it is done (polled: simpler and more
robust than a WebSocket, and the job takes seconds to minutes anyway), GET /view downloads any
file under the server's output folder, images and report files alike, so remote servers work.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

log = logging.getLogger("hc_research")


class ServerDown(Exception):
    """The server did not answer (refused, reset or timed out): the job goes back to the list."""


class JobFailed(Exception):
    """The server answered but the job did not produce its results (rejected, errored, late)."""


class ComfyClient:
    """The few endpoints a sweep needs; every call is bounded by `timeout` seconds."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client_id = f"hc-sweep-{uuid.uuid4().hex[:12]}"

    def _open(self, path: str, payload: dict | None = None) -> bytes:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError:
            raise  # an answer (4xx, 5xx), not silence: the caller decides
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise ServerDown(f"{self.url}: {getattr(exc, 'reason', exc)}") from exc

    def alive(self) -> bool:
        try:
            self._open("/system_stats")
            return True
        except (ServerDown, urllib.error.HTTPError):
            return False

    def submit(self, graph: dict) -> str:
        prompt_id = str(uuid.uuid4())
        try:
            self._open("/prompt", {"prompt": graph, "client_id": self.client_id,
                                   "prompt_id": prompt_id})
        except urllib.error.HTTPError as exc:
            raise JobFailed(f"prompt rejected (HTTP {exc.code}): {_rejection(exc)}") from exc
        return prompt_id

    def wait(self, prompt_id: str, timeout: float, poll_interval: float) -> dict:
        """The job's history entry once it has finished; JobFailed if it errored or took
        longer than `timeout` (then it is also taken off the server)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                entry = json.loads(self._open(f"/history/{prompt_id}")).get(prompt_id)
            except urllib.error.HTTPError as exc:
                raise JobFailed(f"GET /history: HTTP {exc.code}") from exc
            status = (entry or {}).get("status") or {}
            if status.get("status_str") == "error":
                raise JobFailed(_execution_error(status))
            if entry and status.get("completed", True):
                return entry
            time.sleep(poll_interval)
        self.cancel(prompt_id)
        raise JobFailed(f"did not finish within {timeout:g} s (--job-timeout)")

    def cancel(self, prompt_id: str) -> None:
        for path, payload in (("/queue", {"delete": [prompt_id]}),
                              ("/interrupt", {"prompt_id": prompt_id})):
            try:
                self._open(path, payload)
            except (ServerDown, urllib.error.HTTPError) as exc:
                log.warning("%s: could not cancel %s: %s", self.url, prompt_id, exc)

    def download(self, filename: str, subfolder: str, kind: str = "output") -> bytes:
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder,
                                        "type": kind})
        try:
            return self._open(f"/view?{query}")
        except urllib.error.HTTPError as exc:
            raise JobFailed(f"GET /view {subfolder}/{filename}: HTTP {exc.code}") from exc


def _rejection(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
    except (json.JSONDecodeError, OSError):
        return str(exc.reason)
    errors = [f"node {node_id} ({node.get('class_type')}): {err.get('message')} "
              f"{err.get('details', '')}".strip()
              for node_id, node in (body.get("node_errors") or {}).items()
              for err in node.get("errors", [])]
    return "; ".join(errors) or json.dumps(body.get("error", body))[:500]


def _execution_error(status: dict) -> str:
    for event, data in status.get("messages", []):
        if event == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}): "
                    f"{data.get('exception_type')}: {data.get('exception_message')}".strip())
    return "execution failed (no error message in the history)"
