"""sdflow's launchers for sweeps beyond one process: ``hydra/launcher=sdflow_ray`` and ``hydra/launcher=sdflow_slurm``.

They run a sweep as the local fused launcher does (same validation, grouping, job folders, ``.hydra/``
files, logs, JobReturns, callbacks and exit status), except that the batches run on workers: Ray actors
or Slurm array tasks (sdflow.run.remote). Workers send back what each job would write; the driver writes
every job folder through the one writer (new files only), so the sweep folder need not be shared with them.
"""

import logging
from dataclasses import dataclass, field
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
class SdflowSlurmConf:
    _target_: str = "hydra_plugins.sdflow_launcher.remote.SlurmLauncher"
    cluster: str = "slurm"  # "local": submitit's LocalExecutor, tasks as processes on this machine
    folder: str = "${hydra.sweep.dir}/.submitit/%j"  # submitit's logs and pickles: shared by driver and nodes
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    timeout_min: int = 60
    gpus_per_node: int = 1  # each array task is one process on one node
    cpus_per_task: int = 4
    mem_gb: Optional[int] = None
    workers: Optional[int] = None  # array tasks; null: one per batch; N: the batches dealt to N tasks (one load each)
    array_parallelism: int = 256  # tasks of the array running at once
    setup: List[str] = field(default_factory=list)  # shell lines run before each task (module load, ...)
    additional_parameters: Dict[str, Any] = field(default_factory=dict)  # more #SBATCH options
    retries: int = 2  # a task killed before its result is submitted again at most this many times


ConfigStore.instance().store(group="hydra/launcher", name="sdflow_ray", node=SdflowRayConf, provider="sdflow")
ConfigStore.instance().store(group="hydra/launcher", name="sdflow_slurm", node=SdflowSlurmConf, provider="sdflow")


class RemoteLauncher(SweepLauncher):
    """The fused launcher's job loop with the batches run by a pool of workers (``make_pool``)."""

    runs_elsewhere = True

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

    def make_pool(self):
        from sdflow.run.remote.ray_pool import RayPool

        return RayPool(**self.options)


class SlurmLauncher(RemoteLauncher):
    """``hydra/launcher=sdflow_slurm``: the batches as Slurm array tasks through submitit (``cluster=local``: local)."""

    def make_pool(self):
        from sdflow.run.remote.slurm_pool import SubmititPool

        o = dict(self.options)
        slurm = {"partition": o.pop("partition"), "account": o.pop("account"), "qos": o.pop("qos"),
                 "array_parallelism": o.pop("array_parallelism"), "setup": list(o.pop("setup")) or None,
                 "additional_parameters": dict(o.pop("additional_parameters")) or None}
        parameters = {"timeout_min": o.pop("timeout_min"), "gpus_per_node": o.pop("gpus_per_node"),
                      "cpus_per_task": o.pop("cpus_per_task"), "mem_gb": o.pop("mem_gb"), "name": "sdflow",
                      **{f"slurm_{k}": v for k, v in slurm.items()}}
        return SubmititPool(o.pop("folder"), o.pop("cluster"), o.pop("workers"), o.pop("retries"), parameters)
