"""Run a planned sweep on one or several ComfyUI servers, one worker thread per server.

Each worker takes one job at a time from a shared work list (one queue per server, the way
multi-GPU ComfyUI farms are run), so a fast server simply takes more jobs. A server that stops
answering loses only its in-flight job, which goes back to the list for the others; a job the
server itself fails is tried again a few times, then recorded in failures.jsonl. Rows reach the
manifest only once their files are saved, so nothing finished is ever lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from .comfy_api import ComfyClient, JobFailed, ServerDown
from .manifest import Manifest
from .results import collect
from .workflow import Job, Template

log = logging.getLogger("hc_research")


@dataclass
class SweepSettings:
    retries: int = 2  # further tries of a job the server failed (not of a server that died)
    job_timeout: float = 600.0
    poll_interval: float = 0.5
    request_timeout: float = 30.0
    branch: str = "cond"
    down_checks: int = 3  # tries of /system_stats before a silent server counts as down
    down_check_interval: float = 2.0


@dataclass
class SweepOutcome:
    finished: int = 0
    failed: list[Job] = field(default_factory=list)
    remaining: list[Job] = field(default_factory=list)


class WorkList:
    """Jobs shared by the workers. take() waits while the list is empty but jobs are still in
    flight, since a job whose server dies comes back; every wait is bounded by the job timeout
    of whatever is in flight."""

    def __init__(self, jobs: list[Job], max_tries: int):
        self._pending = deque(jobs)
        self._in_flight = 0
        self._errors: dict[str, list[str]] = {}
        self._max_tries = max_tries
        self._cond = threading.Condition()

    def take(self) -> Job | None:
        with self._cond:
            while not self._pending and self._in_flight:
                self._cond.wait(timeout=1.0)
            if not self._pending:
                return None
            self._in_flight += 1
            return self._pending.popleft()

    def done(self, job: Job) -> None:
        with self._cond:
            self._settle(job, requeue=False)

    def put_back(self, job: Job) -> None:
        """The job's server died: another server runs it; this is not the job's fault."""
        with self._cond:
            self._settle(job, requeue=True)

    def failed(self, job: Job, error: str) -> list[str] | None:
        """Count a failed try; the job's errors once it has used up its tries, else None."""
        with self._cond:
            errors = self._errors.setdefault(job.run_id, [])
            errors.append(error)
            exhausted = len(errors) >= self._max_tries
            self._settle(job, requeue=not exhausted)
            return list(errors) if exhausted else None

    def remaining(self) -> list[Job]:
        with self._cond:
            return list(self._pending)

    def _settle(self, job: Job, requeue: bool) -> None:
        """Called with the condition held."""
        self._in_flight -= 1
        if requeue:
            self._pending.append(job)
        self._cond.notify_all()


def pending_jobs(jobs: list[Job], manifest: Manifest) -> list[Job]:
    """The jobs a rerun still has to do: those without all their rows in the manifest."""
    done = manifest.completed_runs()
    return [job for job in jobs if job.run_id not in done]


def run_sweep(template: Template, jobs: list[Job], servers: list[str], out_dir: Path,
              settings: SweepSettings) -> SweepOutcome:
    """Run `jobs` on `servers` (one worker thread each) until done, failed or no server is
    left; finished rows are already in out_dir/manifest.jsonl when this returns."""
    sweep = _Sweep(template, Manifest(out_dir), WorkList(jobs, settings.retries + 1), settings,
                   len(jobs))
    threads = [threading.Thread(target=sweep.serve, args=(url,), name=url, daemon=True)
               for url in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sweep.outcome.remaining = sweep.work.remaining()
    return sweep.outcome


@dataclass
class _Sweep:
    template: Template
    manifest: Manifest
    work: WorkList
    settings: SweepSettings
    total: int
    outcome: SweepOutcome = field(default_factory=SweepOutcome)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def serve(self, url: str) -> None:
        """A server's worker: one job at a time until the list is empty or the server is gone."""
        client = ComfyClient(url, self.settings.request_timeout)
        if not client.alive():
            log.error("%s: not reachable; this server is not used", url)
            return
        while (job := self.work.take()) is not None:
            if not self.run(client, job):
                return

    def run(self, client: ComfyClient, job: Job) -> bool:
        """One job on one server; False when the server is gone and its worker should stop."""
        graph = self.template.fill({**job.values, "run_id": job.run_id})
        settings = self.settings
        try:
            prompt_id = client.submit(graph)
            entry = client.wait(prompt_id, settings.job_timeout, settings.poll_interval)
            rows = collect(client, graph, entry, job, prompt_id, self.manifest.out_dir,
                           settings.branch)
            self.manifest.append(rows)
        except ServerDown as exc:
            self.work.put_back(job)
            log.warning("%s: lost contact (%s); job %s goes back to the list", client.url, exc,
                        job.run_id)
            return _still_up(client, settings)
        except Exception as exc:  # noqa: BLE001 - a worker must settle its job whatever happened
            self.fail(job, f"{client.url}: {exc if isinstance(exc, JobFailed) else repr(exc)}")
            return True
        self.work.done(job)
        with self.lock:
            self.outcome.finished += 1
            log.info("[%d/%d] %s done on %s (%s)", self.outcome.finished, self.total,
                     job.run_id, client.url, _describe(job))
        return True

    def fail(self, job: Job, error: str) -> None:
        log.warning("job %s failed: %s", job.run_id, error)
        errors = self.work.failed(job, error)
        if errors is None:
            return  # it will be tried again
        self.manifest.record_failure({"run_id": job.run_id, "prompt_index": job.prompt_index,
                                      "values": job.values, "errors": errors})
        with self.lock:
            self.outcome.failed.append(job)


def _still_up(client: ComfyClient, settings: SweepSettings) -> bool:
    for attempt in range(settings.down_checks):
        if attempt:
            time.sleep(settings.down_check_interval)
        if client.alive():
            return True
    log.error("%s: down; its worker stops", client.url)
    return False


def _describe(job: Job) -> str:
    parts = [f"prompt {job.prompt_index}"] if job.prompt_index is not None else []
    parts += [f"{k} {v}" for k, v in job.values.items() if k != "prompt"]
    return ", ".join(parts)
