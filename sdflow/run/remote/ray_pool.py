"""Ray workers for a sweep: one long-lived actor per worker, each with its own component cache.

Each actor is given one unit at a time (a whole fused batch, or a job alone) and the next when it is
done, so the work balances itself and every model loads once per actor. An actor that dies loses only
the unit it was running: that unit goes back to the front of the queue for the next free actor, at most
``retries`` more times; Ray starts the dead actor again (``max_restarts`` times), and it rejoins once it
answers.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque

from .sweep import Unit, retry_or_give_up
from .worker import JobOutcome, run_unit, worker_name

log = logging.getLogger("sdflow.remote")


class SweepWorker:
    """A Ray actor: one process and one component cache for the whole sweep."""

    def __init__(self, name: str):
        self.name = worker_name(name)

    def run(self, jobs, max_batch: int) -> list[JobOutcome]:
        return run_unit(jobs, max_batch, self.name)

    def pid(self) -> int:
        return os.getpid()


def loopback_only() -> None:
    """A cluster on this machine is reached through 127.0.0.1, never through the machine's network address.

    (Ray otherwise picks the address it would route to the outside from; on a single machine that needs
    no network, and its usage report is not sent either.)
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read by ray's constants: "no multi-node cluster"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # ray already imported: its constant was read already
        constants.ENABLE_RAY_CLUSTER = False


def resolve(address: str | None) -> str | None:
    """``auto`` as Ray resolves it (RAY_ADDRESS, else the cluster the last ``ray start`` here recorded), so that a
    cluster on 127.0.0.1 is known to be one before connecting; anything else as given. (ray.init is still given
    ``auto``: only then does it read the cluster's token, ~/.ray/auth_token.)"""
    if address != "auto":
        return address
    try:
        from ray._private.services import get_ray_address_from_environment  # Ray's own lookup (no public one)

        return get_ray_address_from_environment("auto", None) or address
    except Exception:  # noqa: BLE001  (no recorded cluster, or Ray moved it: ray.init resolves "auto" itself)
        return address


def connect(address: str | None) -> bool:
    """Connect this process to Ray (``None``: start a local cluster); True when it started one.

    A process already connected (a test's cluster, a notebook's) keeps its connection. A cluster on 127.0.0.1 (one
    sdflow starts, or ``ray start --head`` on a machine with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) is reached there:
    Ray would otherwise rewrite 127.0.0.1 to the machine's network address, where such a cluster does not listen.
    """
    resolved = resolve(address)
    if resolved is None or resolved.split(":")[0] in ("127.0.0.1", "localhost"):
        loopback_only()
    import ray

    if ray.is_initialized():
        return False
    # Workers' output stays in Ray's log files: each job's log lines come back with its outcome instead.
    ray.init(address="local" if address is None else address, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    return address is None


class RayPool:
    """Units of a sweep on Ray actors (``hydra/launcher=sdflow_ray``)."""

    def __init__(self, address: str | None = None, workers: int | None = None, cpus_per_worker: float = 1,
                 gpus_per_worker: float | None = None, max_restarts: int = 1, retries: int = 2):
        self.address, self.workers, self.cpus, self.gpus = address, workers, cpus_per_worker, gpus_per_worker
        self.max_restarts, self.retries = max_restarts, retries
        self.actors: list = []
        self.idle: list[int] = []
        self.pending: deque[Unit] = deque()
        self.running: dict = {}  # object ref -> (actor index, unit)
        self.probing: dict = {}  # object ref of a call to a dead actor -> its index: answers once Ray restarted it
        self.started_cluster = False
        self.max_batch = 1

    def __str__(self) -> str:
        return f"{len(self.actors)} ray worker{'s' if len(self.actors) != 1 else ''}"

    def _size(self, units: int) -> tuple[int, float]:
        """(actors, GPUs each): ``workers``, or one per GPU, or per CPU slot where the cluster has no GPU."""
        import ray

        resources = ray.cluster_resources()
        gpus = self.gpus if self.gpus is not None else (1 if resources.get("GPU") else 0)
        count = self.workers or int(resources.get("GPU", 0) // gpus if gpus else resources.get("CPU", 1) // self.cpus)
        return max(1, min(count, units)), gpus

    def start(self, units: list[Unit], max_batch: int) -> None:
        import ray

        self.started_cluster = connect(self.address)
        count, gpus = self._size(len(units))
        actor = ray.remote(SweepWorker)
        self.actors = [actor.options(num_cpus=self.cpus, num_gpus=gpus, max_restarts=self.max_restarts,
                                     max_task_retries=0).remote(f"ray worker {index}") for index in range(count)]
        self.idle, self.probing = list(range(count)), {}
        self.pending, self.running, self.max_batch = deque(units), {}, max_batch
        self._feed()

    def _feed(self) -> None:
        while self.idle and self.pending:
            index, unit = self.idle.pop(0), self.pending.popleft()
            self.running[self.actors[index].run.remote(unit.jobs, self.max_batch)] = (index, unit)

    def poll(self, timeout: float) -> list[JobOutcome]:
        import ray
        from ray.exceptions import RayActorError

        outcomes: list[JobOutcome] = []
        waiting = list(self.running) + list(self.probing)
        if waiting:
            ready, _ = ray.wait(waiting, num_returns=1, timeout=timeout)
            if ready:
                ready, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0)
            for ref in ready:
                if ref in self.probing:  # a restarted actor answering (back to work), or dead for good
                    index = self.probing.pop(ref)
                    try:
                        ray.get(ref)
                        self.idle.append(index)
                    except RayActorError:
                        log.warning("ray worker %d is gone for good (no restarts left)", index)
                    continue
                index, unit = self.running.pop(ref)
                try:
                    outcomes += ray.get(ref)
                    self.idle.append(index)
                except RayActorError as exc:  # the actor died (killed, out of memory, node lost)
                    # Its next call waits for Ray to start it again (max_restarts), or fails if it cannot.
                    self.probing[self.actors[index].pid.options(max_task_retries=-1).remote()] = index
                    reason = f"ray worker {index} died ({str(exc).strip().splitlines()[0]})"
                    outcomes += retry_or_give_up(unit, reason, self.retries, self.pending)
                except Exception as exc:  # noqa: BLE001  (the worker's own code failed: a worker fault too)
                    self.idle.append(index)
                    reason = f"ray worker {index} failed ({type(exc).__name__}: {str(exc).strip().splitlines()[-1]})"
                    outcomes += retry_or_give_up(unit, reason, self.retries, self.pending)
        self._feed()
        if self.pending and not (self.running or self.idle or self.probing):  # every actor gone for good
            while self.pending:
                unit = self.pending.popleft()
                unit.attempts = self.retries
                outcomes += retry_or_give_up(unit, "no ray worker left", self.retries, self.pending)
        return outcomes

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors, self.running, self.probing = [], {}, {}
        if self.started_cluster:
            ray.shutdown()
            self.started_cluster = False
