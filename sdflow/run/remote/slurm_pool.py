"""Slurm array tasks for a sweep, through submitit: each task runs whole batches in one process, one model load.

The units are submitted as one job array: one task per unit, or, with ``workers=N``, the units dealt
round-robin to N tasks that each run theirs one after the other with one component cache. Results come
back through submitit's own folder (which must be on a filesystem the driver and the nodes share, as
submitit requires). A task that ends without a result (killed, timed out, its node lost) has its units
submitted again as a new task, at most ``retries`` more times. ``cluster=local`` runs the tasks as
processes on this machine (submitit's LocalExecutor), for tests and single machines.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from .sweep import Unit, retry_or_give_up
from .worker import JobOutcome, run_units

log = logging.getLogger("sdflow.remote")


class SubmititPool:
    """Units of a sweep as Slurm array tasks (``hydra/launcher=sdflow_slurm``)."""

    def __init__(self, folder: str, cluster: str = "slurm", workers: int | None = None, retries: int = 2,
                 parameters: dict[str, Any] | None = None):
        self.folder, self.cluster, self.workers, self.retries = folder, cluster, workers, retries
        self.parameters = {k: v for k, v in (parameters or {}).items() if v is not None}
        self.running: list[tuple[Any, list[Unit]]] = []  # (submitit job, its units)
        self.tasks = 0
        self.executor = None
        self.max_batch = 1

    def __str__(self) -> str:
        kind = "local submitit" if self.cluster == "local" else "slurm"
        return f"{self.tasks} {kind} task{'s' if self.tasks != 1 else ''}"

    def start(self, units: list[Unit], max_batch: int) -> None:
        import submitit

        self.executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        self.executor.update_parameters(**self.parameters)
        self.max_batch = max_batch
        count = min(self.workers or len(units), len(units))
        self._submit([units[index::count] for index in range(count)])

    def _submit(self, tasks: list[list[Unit]]) -> None:
        with self.executor.batch():  # one job array
            jobs = [self.executor.submit(run_units, [unit.jobs for unit in task], self.max_batch) for task in tasks]
        self.running += list(zip(jobs, tasks))
        self.tasks += len(tasks)
        log.info("submitted %d task(s): %s", len(jobs), ", ".join(str(job.job_id) for job in jobs))

    def poll(self, timeout: float) -> list[JobOutcome]:
        deadline = time.monotonic() + timeout
        while True:
            finished = [(job, units) for job, units in self.running if job.done()]
            if finished or not self.running or time.monotonic() >= deadline:
                break
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))
        outcomes: list[JobOutcome] = []
        again: deque[Unit] = deque()
        for job, units in finished:
            self.running.remove((job, units))
            try:
                outcomes += job.result()
            except Exception as exc:  # noqa: BLE001  (no result: the task was killed, timed out or crashed)
                reason = f"slurm task {job.job_id} ended without a result ({type(exc).__name__}: " \
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else job.state})"
                for unit in units:
                    outcomes += retry_or_give_up(unit, reason, self.retries, again)
        if again:
            self._submit([sorted(again, key=lambda unit: unit.jobs[0].num)])
        return outcomes

    def close(self) -> None:
        for job, _ in self.running:
            job.cancel(check=False)
        self.running = []
