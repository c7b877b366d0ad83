"""What a remote worker process runs: whole batches of sweep jobs, returned as files to write, records and logs.

A worker never writes into the sweep folder: each job's sinks write into a ``Collected`` writer, and what
they would have written (each file's name and how to render it) comes back for the driver to write through
the one writer every run uses (sdflow.run.outputs). So the sweep folder needs no shared filesystem, nothing
there is ever replaced, and a job is written once, by the driver, whatever the workers did (a worker killed
half-way has written nothing anyone reads).
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import socket
from dataclasses import dataclass, field
from typing import Any

from ...engine import CacheStats, RunRecord, WorkflowError, process_cache
from ..manifest import now
from ..outputs import Collected, PendingFile
from ..sweep import Job, Sweep


@dataclass
class JobOutcome:
    """One job's result as it crosses back to the driver: its files, its record and log lines, or its error."""

    num: int
    files: list[PendingFile] = field(default_factory=list)  # what its sinks wrote, for the driver to write
    record: RunRecord | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)  # the job's log records (logging.makeLogRecord's input)
    worker: str = ""
    cache: CacheStats | None = None  # the worker's component cache after the job
    error: BaseException | None = None
    images: int = 0
    started: str | None = None  # when the worker began the job


class RuntimeUnavailable(WorkflowError):
    """A worker's machine cannot run the runtime its jobs ask for (no GPU, no bfloat16, too little free memory),
    found before it loads anything. Its workers being alike, the sweep stops there (RemoteSweep): once, not N times."""


class RemoteJobError(Exception):
    """A job's exception that could not cross the process boundary as itself: its type's name and message."""

    def __init__(self, kind: str, message: str):
        super().__init__(kind, message)
        self.kind, self.message = kind, message

    def __str__(self) -> str:
        return self.message


class RemoteWorkflowError(RemoteJobError, WorkflowError):
    """A WorkflowError that could not be pickled as itself (reported as one, like locally)."""


def portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling with its type and message, else a stand-in that says the same."""
    if _round_trips(error):
        return error
    kind = RemoteWorkflowError if isinstance(error, WorkflowError) else RemoteJobError
    return kind(type(error).__name__, str(error))


def _round_trips(error: BaseException) -> bool:
    try:
        clone = pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001  (any failure to pickle or unpickle: it does not round-trip)
        return False
    return type(clone) is type(error) and str(clone) == str(error)


class _Capture(logging.Handler):
    """Keeps a job's log records as plain dicts, so the driver can replay them into the job's own log."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("ray"):
            return
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        plain = {k: v for k, v in record.__dict__.items() if isinstance(v, (str, int, float, type(None)))}
        plain.update(msg=text, args=None, exc_text=None)
        self.records.append(plain)


def _captured(run):
    """Runs ``run()`` with the root logger's records (INFO and up) kept; returns (result or error, records)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    capture = _Capture()
    root.handlers, root.level = [capture], logging.INFO
    try:
        return run(), capture.records
    finally:
        root.handlers, root.level = handlers, level


def worker_name(kind: str) -> str:
    return f"{kind} (pid {os.getpid()} on {socket.gethostname()})"


def run_unit(jobs: list[Job], max_batch: int, worker: str) -> list[JobOutcome]:
    """Run ``jobs`` (one fused batch, or one job alone) as the local launcher would, in this process's cache.

    Job faults (a bad input) come back as each job's error, never raised: only a worker fault raises. This machine's
    hardware is checked first (the driver, which need have no GPU, checked everything else): a unit it cannot run
    comes back as its jobs' RuntimeUnavailable, nothing loaded.
    """
    from ...runtime_env import quiet_third_party
    from ..planning import check_machine

    quiet_third_party()
    problems = check_machine(jobs[0].plan, jobs[0].config)  # a unit's jobs share their runtime (one batch, or alone)
    if problems:
        error = RuntimeUnavailable(f"{worker} cannot run it: " + "; ".join(problem.message for problem in problems))
        return [JobOutcome(job.num, worker=worker, error=error, images=job.images, started=now()) for job in jobs]
    cache = process_cache()
    sweep = Sweep(jobs, max_batch)  # the driver's grouping: these jobs were one batch of at most max_batch images
    outcomes = []
    for job in jobs:
        files, started = Collected(), now()

        def run(job=job, files=files):
            try:
                return sweep.run_job(job.num, files, cache), None
            except Exception as exc:  # noqa: BLE001  (the job's own fault: reported as its failure)
                return None, exc

        (result, error), logs = _captured(run)
        outcomes.append(JobOutcome(job.num, files.files, result.record if result is not None else None, logs, worker,
                                   copy.copy(cache.stats), portable(error) if error is not None else None, job.images,
                                   started))
    return outcomes
