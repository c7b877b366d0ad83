"""Slurm array tasks for a sweep, through submitit: each task runs whole batches in one process, one model load.

The units are submitted as one job array: one task per unit, or, with ``workers=N``, the units dealt
round-robin to N tasks that each run theirs one after the other with one component cache. Results come
back through submitit's own folder (which must be on a filesystem the driver and the nodes share, as
submitit requires). A task that ends without a result (killed, timed out, its node lost) has its units
submitted again as a new task, at most ``retries`` more times; one Slurm signals before its time limit or
preemption requeues itself with the units it finished (SlurmTask). ``cluster=local`` runs the tasks as
processes on this machine (submitit's LocalExecutor), for tests and single machines.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections import deque
from typing import Any

import submitit

from ..sweep import Job
from .sweep import Unit, retry_or_give_up
from .worker import JobOutcome, run_unit, worker_name

log = logging.getLogger("sdflow.remote")
VANISHED_AFTER_S = 15.0  # a task out of squeue and without an accounting record this long is gone


class SlurmTask(submitit.helpers.Checkpointable):
    """What one array task runs: its units one after the other, in one process with one component cache.

    Checkpointable: before a time limit (``signal_delay_s``) or on preemption Slurm signals the task, submitit
    requeues it with this object as it is then, and the requeued task runs only the units not finished yet; their
    outcomes so far travel with it. (A task requeued by hand, ``scontrol requeue``, starts again from its first.)
    """

    def __init__(self, units: list[list[Job]], max_batch: int):
        self.units, self.max_batch = units, max_batch
        self.finished: list[list[JobOutcome]] = []  # outcomes of the first units, unit by unit

    def __call__(self) -> list[JobOutcome]:
        worker = worker_name(f"slurm task {submitit.JobEnvironment().job_id}")
        if self.finished:  # the task's own log (its stderr file in the submitit folder)
            print(f"{worker}: resuming after {len(self.finished)} of {len(self.units)} units", file=sys.stderr, flush=True)
        for jobs in self.units[len(self.finished):]:
            self.finished.append(run_unit(jobs, self.max_batch, worker))
            print(f"{worker}: {len(self.finished)} of {len(self.units)} units done", file=sys.stderr, flush=True)
        return [outcome for outcomes in self.finished for outcome in outcomes]


class SubmititPool:
    """Units of a sweep as Slurm array tasks (``hydra/launcher=sdflow_slurm``)."""

    def __init__(self, folder: str, cluster: str = "slurm", workers: int | None = None, retries: int = 2,
                 parameters: dict[str, Any] | None = None, executor: dict[str, Any] | None = None):
        """``parameters``: submitit's (AutoExecutor.update_parameters); ``executor``: its executor's arguments."""
        self.folder, self.cluster, self.workers, self.retries = folder, cluster, workers, retries
        self.parameters = {k: v for k, v in (parameters or {}).items() if v is not None}
        self.executor_options = dict(executor or {})
        self.running: list[tuple[Any, list[Unit]]] = []  # (submitit job, its units)
        self.submitted: list[Any] = []  # every task: those not done are cancelled at the end
        self._missing_since: dict[str, float] = {}  # task id -> when it was first seen neither queued nor accounted
        self._next_queue_check = 0.0
        self.tasks = 0
        self.executor = None
        self.max_batch = 1

    def __str__(self) -> str:
        kind = "local submitit" if self.cluster == "local" else "slurm"
        return f"{self.tasks} {kind} task{'s' if self.tasks != 1 else ''}"

    def start(self, units: list[Unit], max_batch: int) -> None:
        import submitit

        self.executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster, **self.executor_options)
        self.executor.update_parameters(**self.parameters)
        self.max_batch = max_batch
        count = min(self.workers or len(units), len(units))
        self._submit([units[index::count] for index in range(count)])

    def _submit(self, tasks: list[list[Unit]]) -> None:
        with self.executor.batch():  # one job array
            jobs = [self.executor.submit(SlurmTask([unit.jobs for unit in task], self.max_batch)) for task in tasks]
        self.running += list(zip(jobs, tasks))
        self.submitted += jobs
        self.tasks += len(tasks)
        log.info("submitted %d task(s): %s", len(jobs), ", ".join(str(job.job_id) for job in jobs))

    def poll(self, timeout: float) -> list[JobOutcome]:
        deadline = time.monotonic() + timeout
        while True:
            vanished = self._vanished()
            finished = [(job, units) for job, units in self.running if job.job_id in vanished or job.done()]
            if finished or not self.running or time.monotonic() >= deadline:
                break
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))
        outcomes: list[JobOutcome] = []
        again: deque[Unit] = deque()
        for job, units in finished:
            self.running.remove((job, units))
            try:
                if job.job_id in vanished:
                    raise RuntimeError(f"cancelled before it started (gone from squeue, not in sacct for "
                                       f"{VANISHED_AFTER_S:.0f} s)")
                outcomes += job.result()
            except Exception as exc:  # noqa: BLE001  (no result: the task was killed, timed out or crashed)
                reason = f"slurm task {job.job_id} ended without a result ({type(exc).__name__}: " \
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else job.state})"
                for unit in units:
                    outcomes += retry_or_give_up(unit, reason, self.retries, again)
        if again:
            self._submit([sorted(again, key=lambda unit: unit.jobs[0].num)])
        return outcomes

    def _vanished(self) -> set[str]:
        """Tasks neither queued nor running nor finished for VANISHED_AFTER_S: an array task cancelled before it
        started leaves no accounting record, so submitit would wait for it for ever. Asked every few seconds."""
        now = time.monotonic()
        if self.cluster != "slurm" or not self.running or now < self._next_queue_check:
            return set()
        self._next_queue_check = now + 5
        arrays = sorted({str(job.job_id).split("_")[0] for job, _ in self.running})
        queue = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(arrays)], capture_output=True,
                               text=True)
        if queue.returncode != 0:  # squeue answers "Invalid job id" once every listed job has left the queue
            queued = set()
        else:
            queued = set(queue.stdout.split())
        vanished = set()
        for job, _ in self.running:
            if job.job_id in queued or job.state not in ("UNKNOWN", "PENDING", "REQUEUED"):
                self._missing_since.pop(job.job_id, None)
            elif now - self._missing_since.setdefault(job.job_id, now) >= VANISHED_AFTER_S:
                vanished.add(job.job_id)
        return vanished

    def close(self) -> None:
        """Cancel the tasks still queued or running (a sweep stopped early, an interrupted driver)."""
        left = [job for job in self.submitted if not job.done()]
        if self.cluster == "slurm" and left:  # one scancel for them all
            subprocess.run(["scancel", *(str(job.job_id) for job in left)], check=False, capture_output=True)
        else:
            for job in left:
                job.cancel(check=False)
        self.running, self.submitted = [], []
