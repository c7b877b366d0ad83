"""The driver's side of a sweep on remote workers: batches out, outcomes back, each job written once.

The driver groups jobs exactly as the local launcher does (``sweep.Sweep``); each batch (or job that
runs alone) is a *unit* a worker runs whole, with its own component cache, so a worker loads each model
once for the sweep. Hydra then runs every job's task function in order on the driver, as locally: the
task asks this sweep for the job's outcome (waiting for it while keeping the workers fed), writes the
job's files through the one writer (new files only, its manifest), replays the job's log lines into its log
and returns its result or raises its error. A unit whose worker died runs again on the next free worker, at most
``retries`` more times; a job that fails by itself comes back as its error and is never retried. A worker whose
machine cannot run the runtime (no GPU: RuntimeUnavailable) stops the sweep: the workers are released and every
job not run yet fails with that one reason, instead of each waiting for a worker to find the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from ...engine import RunRecord, WorkflowError
from ..outputs import RunFolder
from ..execution import RunResult
from ..progress import SweepFigures
from ..sweep import Job, Sweep
from .worker import JobOutcome, RuntimeUnavailable

log = logging.getLogger("sdflow.remote")


@dataclass
class Unit:
    """Jobs a worker runs together: one fused batch, or one job alone."""

    jobs: list[Job]
    attempts: int = 0  # runs lost with their worker so far

    def __str__(self) -> str:
        nums = [job.num for job in self.jobs]
        return f"job {nums[0]}" if len(nums) == 1 else f"jobs {', '.join(map(str, nums))}"


class WorkerLost(WorkflowError):
    """A job whose worker died on every try: reported as the job's failure, not retried again."""


def units_of(sweep: Sweep) -> list[Unit]:
    """The sweep's batches and lone jobs, in the order of their first job."""
    units, seen = [], set()
    for num, job in sweep.jobs.items():
        batch = sweep.batch_of.get(num)
        if batch is None:
            units.append(Unit([job]))
        elif id(batch) not in seen:
            seen.add(id(batch))
            units.append(Unit(list(batch.jobs)))
    return units


def retry_or_give_up(unit: Unit, reason: str, retries: int, pending) -> list[JobOutcome]:
    """A unit lost with its worker: back to the front of ``pending``, or, out of tries, its jobs' failures."""
    unit.attempts += 1
    if unit.attempts <= retries:
        log.warning("%s while running %s; running them again (try %d of %d)", reason, unit, unit.attempts + 1,
                    retries + 1)
        pending.appendleft(unit)
        return []
    error = WorkerLost(f"lost its worker {unit.attempts} time(s), the last: {reason}")
    log.error("%s: %s", unit, error)
    return [JobOutcome(job.num, error=error, images=job.images) for job in unit.jobs]


class Pool(Protocol):
    """Workers that run units: Ray actors (``ray_pool``) or Slurm array tasks (``slurm_pool``)."""

    def start(self, units: list[Unit], max_batch: int) -> None: ...

    def poll(self, timeout: float) -> list[JobOutcome]:
        """Outcomes that arrived within ``timeout`` seconds (lost units' jobs as failures); feeds idle workers."""

    def close(self) -> None: ...


class RemoteSweep:
    """A sweep whose units run on a pool; each job's task asks it for the job's result, on the driver."""

    def __init__(self, jobs: list[Job], max_batch: int, pool: Pool, progress: bool = True):
        grouping = Sweep(jobs, max_batch)
        self.jobs = grouping.jobs
        self.units = units_of(grouping)
        self.max_batch, self.pool, self.show_progress = max_batch, pool, progress
        self.outcomes: dict[int, JobOutcome] = {}
        self.written: set[int] = set()  # jobs whose outcome was taken: a late duplicate is ignored
        self.bar = None
        self.figures = SweepFigures(len(self.jobs))  # the same figures as a local sweep's progress line
        self.stopped: RuntimeUnavailable | None = None  # why the sweep stopped early

    def start(self) -> None:
        from tqdm.auto import tqdm

        self.pool.start(self.units, self.max_batch)
        self.figures.start()
        self.bar = tqdm(total=len(self.jobs), unit="job", desc=f"sweep on {self.pool}", disable=not self.show_progress,
                        dynamic_ncols=True)

    def _collect(self, timeout: float) -> None:
        for outcome in self.pool.poll(timeout) if self.stopped is None else ():
            if outcome.num in self.written or outcome.num in self.outcomes:
                continue
            self.outcomes[outcome.num] = outcome
            if isinstance(outcome.error, RuntimeUnavailable):
                self._stop(outcome.error)
            self.figures.job_done(outcome.images if outcome.error is None else 0, failed=outcome.error is not None)
            if self.bar is not None:
                self.bar.set_postfix_str(self.figures.text(), refresh=False)
                self.bar.update(1)

    def _stop(self, reason: RuntimeUnavailable) -> None:
        """No worker will run the rest: release the workers; the jobs without an outcome fail with ``reason``."""
        self.stopped = reason
        self.pool.close()
        not_run = [num for num in self.jobs if num not in self.outcomes and num not in self.written]
        log.error("stopping the sweep: %s (%d job(s) not run)", reason, len(not_run))
        error = RuntimeUnavailable(f"not run: {reason}")
        for num in not_run:
            self.outcomes[num] = JobOutcome(num, error=error, images=self.jobs[num].images)

    def outcome(self, num: int) -> JobOutcome:
        """Job ``num``'s outcome, waiting for it; idle workers get more units meanwhile."""
        self._collect(0)
        while num not in self.outcomes:
            self._collect(1.0)
        self.written.add(num)
        return self.outcomes.pop(num)

    def run_job(self, num: int, output_dir: str | Path, cache=None, warn: Callable[[str], None] | None = None,
                on_write: Callable[[Path], None] | None = None) -> RunResult:
        """Job ``num``'s result: its files written into ``output_dir``, its worker's log lines in its log."""
        outcome, job = self.outcome(num), self.jobs[num]
        for record in outcome.logs:
            logging.getLogger(record["name"]).handle(logging.makeLogRecord(record))
        if outcome.worker:
            log.info("ran on %s; its component cache: %s", outcome.worker, outcome.cache)
        record = outcome.record if outcome.record is not None else RunRecord(workflow_file=job.plan.workflow.path)
        for warning in record.warnings if warn is not None else ():
            warn(warning)
        with RunFolder(output_dir, record, outcome.started, on_write) as folder:
            for pending in outcome.files:
                folder.write(pending.name, pending.render, pending.node, pending.listed)
            if outcome.error is not None:
                raise outcome.error
        return RunResult({}, record, folder.saved, job.plan, worker=outcome.worker)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.pool.close()
