"""sdflow's Hydra sweeper and launcher, the defaults for ``sdflow -m``.

The sweeper is Hydra's basic one that first composes and plans every job (sdflow.run.plan: every check), so a
broken job stops the sweep before any folder exists. The launcher runs the jobs as Hydra's basic launcher does
(each a real Hydra job: folder, ``.hydra/``, log, JobReturn, callbacks) while the jobs that differ only in
per-image values share batches (sdflow.run.sweep).

State travels as Hydra's own launchers pass it, by argument: Hydra hands both plugins the task function,
which is sdflow's command (sdflow.cli.command.Command): the sweeper keeps each job's plan there and reports
failed jobs to it; the launcher takes the plans from it and calls it for each job bound to its sweep. What they
take from Hydra's internals (its basic sweeper, composition, job running) is in hydra_jobs.py.
"""

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from .hydra_jobs import BasicSweeper, HydraFiles, SweepConfigs, SweepLogging, run_hydra_job

log = logging.getLogger(__name__)


@dataclass
class SdflowSweeperConf:
    _target_: str = "hydra_plugins.sdflow_launcher.sdflow_launcher.SdflowSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None


@dataclass
class SdflowLauncherConf:
    _target_: str = "hydra_plugins.sdflow_launcher.sdflow_launcher.FusedLauncher"


ConfigStore.instance().store(group="hydra/sweeper", name="sdflow", node=SdflowSweeperConf, provider="sdflow")
ConfigStore.instance().store(group="hydra/launcher", name="sdflow", node=SdflowLauncherConf, provider="sdflow")


class SdflowSweeper(BasicSweeper):
    """Hydra's basic sweeper, planning every job (composed once, the plan kept for its run) before any runs."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.task_function = task_function

    def sweep(self, arguments: List[str]) -> Any:
        from sdflow.engine import InvalidWorkflow, ValidationError
        from sdflow.run import plan

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        parsed = parser.parse_overrides(self._parse_config() + list(arguments))
        batches = self.split_arguments(parsed, None)
        keep = getattr(self.task_function, "keep_plan", None)
        configs = SweepConfigs(self.hydra_context, self.config)
        # Jobs that run on other machines are checked here for all but the hardware, which their workers check.
        here = not getattr(self.launcher, "runs_elsewhere", False)
        errors = grid_problems(self.config, parsed)
        for job in (job for batch in batches for job in batch):
            sweep_config, config = configs(job)
            try:
                planned = plan(None, config, hardware=here)
            except ValidationError as exc:
                errors.append(f"sweep job [{' '.join(job)}]: {exc}")
                continue
            if keep is not None:
                keep(job, planned, config, sweep_config)
        if errors:
            raise InvalidWorkflow("\n".join(errors))
        return self._launch_all(batches)

    def _launch_all(self, batches) -> list:
        """Hydra's basic sweep loop, except that a failed job does not hide the others' results.

        Every job runs; the failures go to the task function (the sdflow command reports them together, exit
        status 1) after the sweep's callbacks (the grid of the jobs that did write images) have run.
        """
        failed = getattr(self.task_function, "job_failed", None)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns, initial_job_idx = [], 0
        for batch in batches:
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            for offset, result in enumerate(results):
                if result.status == JobStatus.FAILED and failed is not None:
                    failed(initial_job_idx + offset, batch[offset], result._return_value)
            initial_job_idx += len(batch)
            returns.append(results)
        return returns

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Every job was composed and planned before the sweep began."""


def grid_problems(config: DictConfig, parsed: list) -> List[str]:
    """``grid.x`` / ``grid.y`` / ``grid.z`` naming a key the sweep does not sweep, refused before any job runs."""
    from sdflow.run.grid_layout import AxisError, choose_axes, grid_setting

    axes = grid_setting(config.get("grid"))
    try:
        if axes is not None:
            choose_axes([o.key_or_group.lstrip("+~") for o in parsed if o.is_sweep_override()], **axes)
    except AxisError as exc:
        return [f"grid.{exc}"]
    return []


class SweepLauncher(Launcher):
    """A launcher that runs a sweep's jobs in order, as Hydra's basic launcher does, each task bound to a sweep
    object that gives it its result (``make_sweep``: local fused batches, or batches on remote workers)."""

    runs_elsewhere = False  # True: the jobs run on workers, which check their own hardware (sdflow.run.check_machine)

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = options
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def make_sweep(self, jobs: list, max_batch: int):
        raise NotImplementedError

    def jobs(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> tuple[list, list]:
        """(sweep Jobs, (num, overrides, sweep config) per job): the plans the sweeper kept, or composed here."""
        from sdflow.run import plan
        from sdflow.run.sweep import Job

        planned = getattr(self.task_function, "planned", lambda overrides: None)
        compose = SweepConfigs(self.hydra_context, self.config)
        jobs, configs = [], []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            kept = planned(overrides)
            if kept is None or kept.sweep_config is None:  # planned elsewhere (another sweeper): plan here
                sweep_config, config = compose(overrides)
                job_plan = plan(None, config, hardware=not self.runs_elsewhere)
            else:
                sweep_config, config, job_plan = kept.sweep_config, kept.config, kept.plan
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            configs.append((idx, overrides, sweep_config))
            jobs.append(Job(idx, tuple(overrides), config, job_plan))
        return jobs, configs

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from sdflow.run.sweep import max_batch

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs, configs = self.jobs(job_overrides, initial_job_idx)
        if not jobs:
            return []
        sweep = self.make_sweep(jobs, max_batch(jobs[0].config))
        logs, files = SweepLogging(self.config), HydraFiles()
        try:
            runs: List[JobReturn] = []
            for job, (idx, overrides, sweep_config) in zip(jobs, configs):
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                task = functools.partial(self.task_function, sweep=sweep, num=idx)
                runs.append(run_hydra_job(self.hydra_context, task, sweep_config, job.config, logs, files))
                logs.end_job()
            return runs
        finally:
            close = getattr(sweep, "close", None)
            if close is not None:
                close()


class FusedLauncher(SweepLauncher):
    """Runs a sweep's jobs in order in this process; jobs that can share batches do (sdflow.run.sweep)."""

    def make_sweep(self, jobs: list, max_batch: int):
        from sdflow.run.sweep import Sweep

        log.info(f"Launching {len(jobs)} jobs locally, fusing those that differ only in per-image values")
        return Sweep(jobs, max_batch)
