"""sdflow's Hydra sweeper and launcher, the defaults for ``sdflow -m``.

The sweeper is Hydra's basic one that first composes and validates every job, so a broken job stops
the sweep before any folder exists, and refuses a bare comma in a swept text value. The launcher runs
the jobs as Hydra's basic launcher does (each a real Hydra job: folder, ``.hydra/``, log, JobReturn,
callbacks) while the jobs that differ only in per-image values share batches (sdflow.fused).
"""


import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import QuotedString, ValueType
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

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


def comma_problems(overrides: Sequence[str]) -> list[str]:
    """A bare comma list on a text key would silently sweep the halves of one text: refuse it, showing both spellings."""
    from sdflow.api import TEXT_KEYS

    problems = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.get_key_element().split("@")[0].lstrip("+~")
        if key not in TEXT_KEYS or override.value_type != ValueType.SIMPLE_CHOICE_SWEEP:
            continue
        items = override._value.list
        if all(isinstance(item, QuotedString) for item in items):
            continue  # every text quoted: the commas between them can only mean a sweep
        texts = [item.text if isinstance(item, QuotedString) else str(item) for item in items]
        whole = ", ".join(texts)
        choices = ",".join(f'"{t}"' for t in texts)
        problems.append(
            f"{key}: a comma in a swept text value is ambiguous: '{override.input_line}' would run {len(texts)} "
            f"jobs ({' | '.join(texts)}). For one {key} that contains a comma, quote it: '{key}=\"{whole}\"'. "
            f"For a sweep of {key}s, quote each one: '{key}={choices}' (or {key}=choice({choices})).")
    return problems


class SdflowSweeper(BasicSweeper):
    """Hydra's basic sweeper, validating every job (composed once, kept for the launcher) before any runs."""

    def sweep(self, arguments: List[str]) -> Any:
        from sdflow.api import plan_workflow
        from sdflow.engine import InvalidWorkflow, ValidationError
        from sdflow.fused import forget_plans, remember_plan

        problems = comma_problems(arguments)
        if problems:
            raise InvalidWorkflow("the sweep is ambiguous:\n" + "\n".join(f"  - {p}" for p in problems))
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        parsed = parser.parse_overrides(self._parse_config() + list(arguments))
        batches = self.split_arguments(parsed, None)
        errors = []
        for job in (job for batch in batches for job in batch):
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(job))
            task_config = _task_config(sweep_config)
            try:
                remember_plan(job, sweep_config, plan_workflow(task_config))
            except ValidationError as exc:
                errors.append(f"sweep job [{' '.join(job)}]: {exc}")
        if errors:
            raise InvalidWorkflow("\n".join(errors))
        try:
            return self._launch_all(batches)
        finally:
            forget_plans()

    def _launch_all(self, batches) -> list:
        """Hydra's basic sweep loop, except that a failed job does not hide the others' results.

        Every job runs; the failures are reported together by the sdflow command (exit status 1) after
        the sweep's callbacks (the grid of the jobs that did write images) have run.
        """
        from hydra.core.utils import JobStatus

        from sdflow.fused import job_failed

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns, initial_job_idx = [], 0
        for batch in batches:
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            for offset, result in enumerate(results):
                if result.status == JobStatus.FAILED:
                    job_failed(initial_job_idx + offset, batch[offset], result._return_value)
            initial_job_idx += len(batch)
            returns.append(results)
        return returns

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Every job was composed and validated before the sweep began."""


def _task_config(sweep_config: DictConfig) -> DictConfig:
    """A job's config as its task function sees it: without the ``hydra`` node."""
    task_config = sweep_config.copy()
    with open_dict(task_config):
        del task_config["hydra"]
    return task_config


def prepare_jobs(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> tuple[list, list]:
    """(fused Jobs, (num, overrides, sweep config) per job): the sweeper's kept plans, or composed and validated here."""
    from sdflow.api import plan_workflow
    from sdflow.fused import Job, planned

    jobs, configs = [], []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        remembered = planned(overrides)
        if remembered is None:  # validated elsewhere (another sweeper): compose and validate here
            sweep_config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
            plan = plan_workflow(_task_config(sweep_config))
        else:
            sweep_config, plan = remembered
            sweep_config = sweep_config.copy()
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
        configs.append((idx, overrides, sweep_config))
        jobs.append(Job(idx, tuple(overrides), _task_config(sweep_config), plan))
    return jobs, configs


def run_in_order(launcher, configs) -> List[JobReturn]:
    """Each job through Hydra's run_job, as the basic launcher does: its folder, .hydra files, log, JobReturn."""
    runs: List[JobReturn] = []
    for idx, overrides, sweep_config in configs:
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        runs.append(run_job(hydra_context=launcher.hydra_context, task_function=launcher.task_function,
                            config=sweep_config, job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
        configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    return runs


class FusedLauncher(Launcher):
    """Runs a sweep's jobs in order in this process; jobs that can share batches do (sdflow.fused)."""

    def __init__(self) -> None:
        super().__init__()
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from sdflow.fused import Sweep, activate, max_batch

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs locally, fusing those that differ only in per-image values")
        jobs, configs = prepare_jobs(self, job_overrides, initial_job_idx)
        activate(Sweep(jobs, max_batch(jobs[0].config) if jobs else 1))
        try:
            return run_in_order(self, configs)
        finally:
            activate(None)
