"""Sweeps beyond one process: the fused sweep's batches on Ray actors or Slurm array tasks.

``sweep`` is the driver's side (grouping, retries, writing each job's folder), ``worker`` what a worker
process runs, ``ray_pool`` and ``slurm_pool`` the two ways of getting workers. The Hydra launchers
that use them are in ``hydra_plugins/sdflow_launcher/remote.py``.
"""

from .sweep import RemoteSweep, Unit, WorkerLost
from .worker import JobOutcome, RemoteJobError

__all__ = ["JobOutcome", "RemoteJobError", "RemoteSweep", "Unit", "WorkerLost"]
