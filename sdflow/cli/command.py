"""One ``sdflow`` command: what its process keeps across its jobs, and the Hydra task function of each job.

``main`` makes one Command and hands it to Hydra as the task function; Hydra hands the same object to the
sweeper and the launcher (their ``setup(task_function=...)``), as its own Ray and submitit launchers pass
everything a job needs by argument. So nothing travels between sweeper, launcher and task through module
globals: the plans validated before the first job, the jobs that failed, the images written (for the Ctrl-C
report), warnings said once, and the run folders claimed all live here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from ..engine import Plan

log = logging.getLogger("sdflow")


@dataclass
class KeptPlan:
    """A job's validated plan with the config it was made from (and, in a sweep, Hydra's config of the job)."""

    plan: Plan
    config: DictConfig
    sweep_config: DictConfig | None = None


class Command:
    """The state of one ``sdflow`` command; calling it runs one job (Hydra's task function)."""

    def __init__(self) -> None:
        self.plans: dict[tuple[str, ...], KeptPlan] = {}  # by the job's overrides
        self.failures: list[tuple[int, str, str]] = []  # (N, "[overrides]", error) of every failed sweep job
        self.saved: list[Path] = []  # every image written, for the Ctrl-C report
        self.error: BaseException | None = None  # a single run's failure, raised again by main
        self.interrupted = False
        self.jobs_run = 0
        self._warned: set[str] = set()
        self._claimed: dict[str, str] = {}

    def keep_plan(self, overrides: Sequence[str], plan: Plan, config: DictConfig,
                  sweep_config: DictConfig | None = None) -> None:
        """Keep a job's validated plan (and the configs it was made from), so it is composed and planned once."""
        self.plans[tuple(overrides)] = KeptPlan(plan, config, sweep_config)

    def planned(self, overrides: Sequence[str]) -> KeptPlan | None:
        return self.plans.get(tuple(overrides))

    def job_failed(self, num: int, overrides: Sequence[str], error: BaseException) -> None:
        self.failures.append((num, f"[{' '.join(overrides)}]", str(error)))

    def failure_report(self) -> str:
        """The sweep's failed jobs, one line per reason: jobs that failed alike (a sweep stopped because its workers
        have no GPU) are named together."""
        reasons: dict[str, list[tuple[int, str]]] = {}
        for num, overrides, reason in self.failures:
            reasons.setdefault(reason, []).append((num, overrides))
        lines = [f"job {jobs[0][0]} {jobs[0][1]}: {reason}" if len(jobs) == 1 else
                 f"jobs {', '.join(str(num) for num, _ in jobs)}: {reason}" for reason, jobs in reasons.items()]
        return f"sdflow: {len(self.failures)} job(s) of the sweep failed:" + "".join(f"\n  - {line}" for line in lines)

    def warn(self, text: str) -> None:
        """Log a warning once per command (once per run, or once for a whole sweep)."""
        if text not in self._warned:
            self._warned.add(text)
            log.warning(text)

    def claim_folder(self, base: str) -> str:
        """The config resolver ``sdflow_new_folder``: ``base``, or ``base_2``... that this process created.

        Hydra reads the folder from many copies of the config, so the claim is remembered: every read gives the
        same folder.
        """
        from ..run import claim_folder

        if base not in self._claimed:
            self._claimed[base] = str(claim_folder(base))
        return self._claimed[base]

    def __call__(self, config: DictConfig, sweep: Any = None, num: int | None = None) -> None:
        """Run one job: its share of ``sweep`` (job ``num``), or its own kept (else newly made) plan."""
        from hydra.core.hydra_config import HydraConfig

        from ..engine import WorkflowError, process_cache
        from ..nodes.records import SafetyReport
        from ..run import plan, run
        from ..runtime_env import settle_heap

        hydra_config = HydraConfig.get()
        output_dir = hydra_config.runtime.output_dir
        self.jobs_run += 1
        if self.jobs_run == 1:
            settle_heap()  # the sweep's configs and plans live as long as the command: out of the collector's walks
        try:
            if sweep is not None:
                result = sweep.run_job(num, output_dir, warn=self.warn, on_write=self.saved.append)
            else:
                kept = self.planned(list(hydra_config.overrides.task))
                job_plan = kept.plan if kept is not None else plan(None, config)
                result = run(job_plan, config, output_dir, warn=self.warn, on_write=self.saved.append)
        except WorkflowError as exc:
            if str(hydra_config.mode) == "RunMode.MULTIRUN":
                log.error("%s", exc)  # into the job's own log, besides the sweep's summary
                raise  # the job's JobReturn records the failure
            self.error = exc  # reported by main() in one line, past Hydra's traceback printing
            return
        if self.jobs_run == 1:
            settle_heap()  # what the first job loaded (libraries, models) stays for the command's life
        for path in result.saved:
            log.info("wrote %s", path)
        for node_id, report in result.record.of(SafetyReport).items():
            if any(report.flagged):
                log.warning("%s: %d image(s) flagged by the safety checker", node_id, sum(report.flagged))
        if not result.worker:  # a remote worker's job logged its worker's cache instead
            log.info("component cache: %s", process_cache().stats)
