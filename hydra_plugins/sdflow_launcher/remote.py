"""sdflow's launchers for sweeps beyond one process: ``hydra/launcher=sdflow_ray`` and ``hydra/launcher=sdflow_slurm``.

They run a sweep as the local fused launcher does (same validation, grouping, job folders, ``.hydra/``
files, logs, JobReturns, callbacks and exit status), except that the batches run on workers: Ray actors
or Slurm array tasks (sdflow.run.remote). Workers send back what each job would write; the driver writes
every job folder through the one writer (new files only), so the sweep folder need not be shared with them.
"""

import logging
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

from .sdflow_launcher import SweepLauncher

log = logging.getLogger(__name__)


@dataclass
class SdflowRayConf:
    _target_: str = "hydra_plugins.sdflow_launcher.remote.RayLauncher"
    address: Optional[str] = None  # null: start a local cluster on this machine; "auto": join a running one; HOST:PORT
    workers: Optional[int] = None  # actors; null: one per GPU, or one per CPU slot on a cluster without GPUs
    cpus_per_worker: float = 1
    gpus_per_worker: Optional[float] = None  # null: 1 on a cluster with GPUs, else 0
    max_restarts: int = 1  # Ray starts a dead actor again this many times
    retries: int = 2  # a batch whose worker died runs again at most this many times, then its jobs fail


@dataclass
class SubmititResources:
    """What each array task asks of the cluster, in submitit's names for every cluster (its AutoExecutor's)."""

    timeout_min: int = 60
    gpus_per_node: int = 1  # each array task is one process on one node
    cpus_per_task: int = 4
    mem_gb: Optional[int] = None
    name: str = "sdflow"  # the Slurm job name


@dataclass
class SdflowSlurmConf(SubmititResources):
    """``hydra/launcher=sdflow_slurm``: submitit's resources (above); Slurm's own options, given to submitit as its
    ``slurm_*`` parameters (each field below except sdflow's four, which it says); sdflow's."""

    _target_: str = "hydra_plugins.sdflow_launcher.remote.SlurmLauncher"
    # sdflow's own
    cluster: str = "slurm"  # "local": submitit's LocalExecutor, tasks as processes on this machine
    folder: str = "${hydra.sweep.dir}/.submitit/%j"  # submitit's logs and pickles: shared by driver and nodes
    workers: Optional[int] = None  # array tasks; null: one per batch; N: the batches dealt to N tasks (one load each)
    retries: int = 2  # a task that ended without a result is submitted again at most this many times
    # Slurm's (sbatch options)
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None  # node features, e.g. "a100|h100"
    exclude: Optional[str] = None  # nodes not to use
    array_parallelism: int = 256  # tasks of the array running at once
    signal_delay_s: int = 90  # USR2 this long before the time limit: the task requeues itself with what it finished
    max_num_timeout: int = 3  # requeues after a time limit or preemption (submitit's count), then the task fails
    setup: List[str] = field(default_factory=list)  # shell lines run before each task (module load, ...)
    additional_parameters: Dict[str, Any] = field(default_factory=dict)  # any other #SBATCH option, e.g. {gres: ...}


SDFLOW_SLURM_OPTIONS = ("cluster", "folder", "workers", "retries")
EXECUTOR_OPTIONS = ("max_num_timeout",)  # given to submitit's executor when it is made, not per submission


def submitit_parameters(options: Dict[str, Any]) -> tuple[Dict[str, Any], Dict[str, Any]]:
    """(the executor's arguments, its parameters): the launcher's options as submitit's AutoExecutor takes them, its
    generic names as they are, Slurm's with their ``slurm_`` prefix (which the local executor ignores); unset ones
    (null, empty) left to Slurm's defaults."""
    from omegaconf import OmegaConf

    generic = {f.name for f in fields(SubmititResources)}
    executor, parameters = {}, {}
    for name, value in options.items():
        if name in SDFLOW_SLURM_OPTIONS or value is None or value in ([], {}):
            continue
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        (executor if name in EXECUTOR_OPTIONS else parameters)[name if name in generic else f"slurm_{name}"] = value
    return executor, parameters


ConfigStore.instance().store(group="hydra/launcher", name="sdflow_ray", node=SdflowRayConf, provider="sdflow")
ConfigStore.instance().store(group="hydra/launcher", name="sdflow_slurm", node=SdflowSlurmConf, provider="sdflow")


class RemoteLauncher(SweepLauncher):
    """The fused launcher's job loop with the batches run by a pool of workers (``make_pool``)."""

    runs_elsewhere = True
    name = ""  # as in hydra/launcher=NAME
    needs: tuple[str, ...] = ()  # the cluster extra's modules it imports

    def setup(self, **kwargs) -> None:
        # Hydra sets the launcher up before the sweep is planned or any folder made: a missing extra is one line.
        from sdflow.engine import InvalidWorkflow
        from sdflow.extras import missing_extra

        missing = missing_extra("cluster", self.needs, f"hydra/launcher={self.name}")
        if missing:
            raise InvalidWorkflow(missing)
        super().setup(**kwargs)

    def make_pool(self):
        raise NotImplementedError

    def make_sweep(self, jobs: list, max_batch: int):
        from sdflow.run.remote import RemoteSweep

        sweep = RemoteSweep(jobs, max_batch, self.make_pool())
        sweep.start()
        log.info(f"Launching {len(jobs)} jobs on {sweep.pool}: {len(sweep.units)} batches or lone jobs")
        return sweep


class RayLauncher(RemoteLauncher):
    """``hydra/launcher=sdflow_ray``: the batches on long-lived Ray actors, one component cache each."""

    name, needs = "sdflow_ray", ("ray",)

    def make_pool(self):
        from sdflow.run.remote.ray_pool import RayPool

        return RayPool(**self.options)


class SlurmLauncher(RemoteLauncher):
    """``hydra/launcher=sdflow_slurm``: the batches as Slurm array tasks through submitit (``cluster=local``: local)."""

    name, needs = "sdflow_slurm", ("submitit",)

    def make_pool(self):
        from sdflow.run.remote.slurm_pool import SubmititPool

        own = {name: self.options[name] for name in SDFLOW_SLURM_OPTIONS if name in self.options}
        executor, parameters = submitit_parameters(self.options)
        return SubmititPool(**own, executor=executor, parameters=parameters)
