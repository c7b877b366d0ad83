"""Time a 16-job tiny sweep on 1 and on 2 workers (Ray actors or Slurm tasks, CPU), and count each one's loads.

    python bench/remote_sweep.py                  # 16 jobs (4 seeds x 4 prompts), tiny model, 20 steps, Ray
    python bench/remote_sweep.py --steps 40 --max-batch 2
    python bench/remote_sweep.py --cluster slurm  # on the 'debug' partition (bash scripts/slurm-local.sh start)

The sweep runs as ``hydra/launcher=sdflow_ray`` (a local Ray cluster) or ``sdflow_slurm`` with ``workers=N``
runs it (sdflow.run.remote: the driver groups the jobs into batches, workers run them, the driver writes
every job's PNG), from the first batch sent to the last PNG written, workers' start-up (a Slurm task's
scheduling, importing torch, loading the weights) included: that is what a sweep pays.
Each is run ``--repeats`` times, alternating, and the best printed (other work on a shared machine only
ever slows a run down). Also printed: the same jobs on the local fused launcher's path in this process
(warm imports, cold cache). Pixels are checked equal across the runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per process: two processes share two cores

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow circle"]


def sweep_jobs(steps: int):
    from sdflow.api import compose_config, plan_workflow
    from sdflow.run.sweep import Job

    jobs = []
    for seed in range(4):
        for prompt in PROMPTS:
            overrides = ["model=tiny", f"steps={steps}", f"seed={seed}", f"prompt={prompt}", "runtime.output_cache=false"]
            config = compose_config(overrides)
            jobs.append(Job(len(jobs), tuple(overrides), config, plan_workflow(config)))
    return jobs


def worker_pool(cluster: str, workers: int, folder: Path):
    if cluster == "ray":
        from sdflow.run.remote.ray_pool import RayPool

        return RayPool(workers=workers)
    from sdflow.run.remote.slurm_pool import SubmititPool

    return SubmititPool(str(folder / ".submitit" / "%j"), workers=workers, parameters={
        "slurm_partition": "debug", "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 1, "timeout_min": 10})


def on_workers(jobs, max_batch: int, pool, folder: Path) -> tuple[float, dict[str, int], dict[int, bytes]]:
    """(seconds, each worker's component loads, each job's PNG bytes) of the sweep on ``pool``."""
    from sdflow.run.remote import RemoteSweep

    loads = {}

    class Counting(RemoteSweep):
        def outcome(self, num):
            got = super().outcome(num)
            loads[got.worker.split(" (pid")[0]] = got.cache.loads
            return got

    sweep = Counting(jobs, max_batch, pool, progress=False)
    began = time.perf_counter()
    sweep.start()
    try:
        saved = {job.num: sweep.run_job(job.num, folder / str(job.num)).saved[0] for job in jobs}
    finally:
        sweep.close()
    return time.perf_counter() - began, loads, {num: path.read_bytes() for num, path in saved.items()}


def in_process(jobs, max_batch: int, folder: Path) -> tuple[float, dict[int, bytes]]:
    from sdflow.engine import ComponentCache
    from sdflow.run.sweep import Sweep

    sweep, cache = Sweep(jobs, max_batch), ComponentCache()
    began = time.perf_counter()
    pngs = {}
    for job in jobs:
        (path,) = sweep.run_job(job.num, folder / str(job.num), cache).saved
        pngs[job.num] = path.read_bytes()
    return time.perf_counter() - began, pngs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-batch", type=int, default=4, help="images per batch (16 jobs: 4 batches of 4)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternating; the best is printed")
    parser.add_argument("--cluster", choices=("ray", "slurm"), default="ray",
                        help="ray: a local cluster this script starts; slurm: sbatch to the running cluster")
    args = parser.parse_args()

    jobs = sweep_jobs(args.steps)
    with tempfile.TemporaryDirectory(prefix="sdflow-bench-") as scratch:
        if args.cluster == "ray":
            import ray

            from sdflow.run.remote.ray_pool import connect

            connect(None)  # a local cluster: this machine's CPUs, loopback only
            cpus = int(ray.cluster_resources().get("CPU", 0))
        else:
            cpus = os.cpu_count()
        runs: dict[int, list] = {1: [], 2: []}  # workers -> (seconds, loads per worker, PNG bytes) of each run
        try:
            for repeat in range(args.repeats):  # alternating, so a burst of other work hits both alike
                for workers in runs:
                    folder = Path(scratch, f"{workers}-{repeat}")
                    pool = worker_pool(args.cluster, workers, folder)
                    runs[workers].append(on_workers(jobs, args.max_batch, pool, folder))
        finally:
            if args.cluster == "ray":
                ray.shutdown()
        local, pngs_local = in_process(jobs, args.max_batch, Path(scratch, "local"))
    load = os.getloadavg()[0]  # the machine may be shared: other work competes for the same cores
    best = {workers: min(found, key=lambda run: run[0]) for workers, found in runs.items()}
    same = all(run[2] == pngs_local for found in runs.values() for run in found)
    images = len(jobs)
    print(f"{len(jobs)} jobs, tiny model, {args.steps} steps, batches of {args.max_batch} "
          f"({-(-images // args.max_batch)} batches), CPU fp32, {cpus} CPUs, {os.cpu_count()} cores, load {load:.1f}")
    for workers, (seconds, loads, _) in best.items():
        every = ", ".join(f"{run[0]:.1f}" for run in runs[workers])
        kind = "ray actor" if args.cluster == "ray" else "slurm task"
        print(f"  {workers} {kind}{'s' if workers > 1 else ' '}: {seconds:6.1f} s (best of {every})  "
              f"{images / seconds:5.2f} images/s  loads per worker {loads}")
    print(f"  speed-up, 2 workers over 1: {best[1][0] / best[2][0]:.2f}x")
    print(f"  local fused launcher path, this process: {local:6.1f} s  {images / local:5.2f} images/s")
    print(f"  same PNG bytes in every run: {same}")


if __name__ == "__main__":
    main()
