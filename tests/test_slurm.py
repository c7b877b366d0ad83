"""Sweeps on a real Slurm cluster: Debian's slurm-wlm on this machine (scripts/slurm-local.sh, started by .ci/run).

sbatch job arrays with the launcher's partition, time, cpus, memory and extra options; the same pixels as the
local sweep; a task cancelled with scancel run again, or reported once out of retries; a bad job failing alone;
a task Slurm signals before its time limit (or preempts) requeued with what it had finished, nothing lost.
Skipped, saying why, where no Slurm runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from sdflow.run.remote import RemoteSweep, WorkerLost
from test_remote_sweeps import (SWEEP, assert_complete, assert_same_sweep, images, jobs_for, local_sweep,  # noqa: F401
                                metadata, mismatched_copy, pixels, sdflow, worker_loads)

pytestmark = pytest.mark.slow  # real sbatch tasks: each starts a Python process that loads the tiny model


def slurm_problem() -> str | None:
    """Why the Slurm tests cannot run here, or None."""
    if shutil.which("sbatch") is None:
        return "Slurm is not installed (apt-get install slurm-wlm slurmdbd munge mariadb-server; .ci/run does)"
    state = subprocess.run(["sinfo", "-h", "-p", "debug", "-o", "%t"], capture_output=True, text=True)
    if state.returncode != 0 or not re.search(r"idle|mix|alloc", state.stdout):
        return (f"no Slurm cluster with an up 'debug' partition (bash scripts/slurm-local.sh start): sinfo said "
                f"{(state.stdout + state.stderr).strip()!r}{slurm_local_logs()}")
    return None


def slurm_local_logs() -> str:
    """The last lines of each log scripts/slurm-local.sh left, if it ran: why its cluster is not up."""
    logs = Path(os.environ.get("SDFLOW_SLURM_DIR", "/tmp/sdflow-slurm")) / "log"
    tails = [f"{log.name}: {' | '.join(log.read_text(errors='replace').splitlines()[-5:])}"
             for log in sorted(logs.glob("*.log"))]
    return f"; slurm-local's logs ({logs}): " + "; ".join(tails) if tails else ""


@pytest.fixture(scope="module", autouse=True)
def slurm():
    problem = slurm_problem()
    if problem:
        pytest.skip(problem)


# The launcher's options for the local cluster: no GPU, one CPU and 1 GB a task.
ON_SLURM = ["hydra/launcher=sdflow_slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
PARAMETERS = {"slurm_partition": "debug", "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 1, "timeout_min": 10}


def sacct(job_id: str, timeout: float = 30) -> list[dict[str, str]]:
    """Slurm's accounting of a job's tasks, once none is running (a task ends a moment after its result is in)."""
    fields = ["JobID", "Partition", "State", "AllocCPUS", "ReqMem", "Timelimit", "JobName"]
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", ",".join(fields)], capture_output=True,
                              text=True, check=True)
        tasks = [dict(zip(fields, line.split("|"))) for line in done.stdout.splitlines() if line]
        if all(t["State"] not in ("RUNNING", "PENDING", "COMPLETING") for t in tasks) or time.monotonic() > deadline:
            return tasks
        time.sleep(0.2)


def test_a_sweep_on_slurm_is_one_sbatch_job_array_with_the_launchers_options_and_the_local_pixels(local_sweep,
                                                                                                   tmp_path):
    run = sdflow(tmp_path, *SWEEP, "hydra.sweep.dir=out", *ON_SLURM, "hydra.launcher.timeout_min=7",
                 "hydra.launcher.signal_delay_s=30", "+hydra.launcher.additional_parameters.comment=sdflow-test")
    assert run.returncode == 0, run.stderr
    assert_same_sweep(tmp_path / "out", local_sweep)  # the same pixels, bit for bit: the same batches of four
    loads = worker_loads(tmp_path / "out")
    assert len(loads) == 2 and set(loads.values()) == {5}  # one array task per batch, each model loaded once each
    (script,) = (tmp_path / "out" / ".submitit").glob("*/*_submission.sh")
    sbatch = set(re.findall(r"^#SBATCH (.+)$", script.read_text(), re.M))
    assert {"--partition=debug", "--cpus-per-task=1", "--mem=1GB", "--time=7", "--signal=USR2@30",
            "--comment=sdflow-test", "--job-name=sdflow"} <= sbatch
    assert any(re.fullmatch(r"--array=0-1%\d+", option) for option in sbatch)
    array = script.name.split("_")[0]
    tasks = sacct(array)
    assert sorted(t["JobID"] for t in tasks) == [f"{array}_0", f"{array}_1"]
    assert {(t["Partition"], t["State"], t["AllocCPUS"], t["Timelimit"]) for t in tasks} == \
        {("debug", "COMPLETED", "1", "00:07:00")}


def wait_running(task_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run(["squeue", "-h", "-j", task_id, "-o", "%T"], capture_output=True, text=True).stdout
        if state.strip() == "RUNNING":
            return
        time.sleep(0.1)
    raise AssertionError(f"slurm task {task_id} did not start within {timeout} s")


def two_job_sweep(tmp_path: Path, retries: int, **parameters):
    from sdflow.run.remote.slurm_pool import SubmititPool

    jobs = jobs_for([["model=tiny", "steps=2", "seed=0", f"prompt={p}"] for p in ("a red circle", "a blue square")])
    pool = SubmititPool(str(tmp_path / "submitit" / "%j"), retries=retries, parameters={**PARAMETERS, **parameters})
    sweep = RemoteSweep(jobs, max_batch=1, pool=pool, progress=False)  # two units: one array task each
    sweep.start()
    return sweep, pool, [job.job_id for job, _ in pool.running]


def test_tasks_cancelled_with_scancel_run_again_and_each_job_is_written_once(local_sweep, tmp_path, caplog):
    sweep, pool, (first, second) = two_job_sweep(tmp_path, retries=1, slurm_array_parallelism=1)
    wait_running(first)
    subprocess.run(["scancel", "--signal=KILL", first], check=True)  # killed while running
    subprocess.run(["scancel", second], check=True)  # cancelled while waiting for the first (one at a time)
    try:
        results = [sweep.run_job(num, tmp_path / "out" / str(num)) for num in range(2)]
    finally:
        sweep.close()
    assert f"slurm task {first} ended without a result" in caplog.text
    assert f"slurm task {second} ended without a result" in caplog.text
    assert [unit.attempts for unit in sweep.units] == [1, 1] and pool.tasks == 3  # both again, in one new task
    reference = images(local_sweep)
    for num, result in enumerate(results):
        (path,) = result.saved
        assert_complete(path.parent, path)
        assert metadata(path)["image"]["values"] == metadata(reference[f"{num}/{path.name}"])["image"]["values"]


def test_a_task_cancelled_past_its_retries_is_reported_and_the_others_are_written(tmp_path):
    sweep, pool, (first, second) = two_job_sweep(tmp_path, retries=0, slurm_array_parallelism=1)
    subprocess.run(["scancel", second], check=True)
    try:
        (saved,) = sweep.run_job(0, tmp_path / "out" / "0").saved
        with pytest.raises(WorkerLost, match=rf"lost its worker 1 time\(s\), the last: slurm task {second} ended"):
            sweep.run_job(1, tmp_path / "out" / "1")
    finally:
        sweep.close()
    assert_complete(saved.parent, saved)
    manifest = json.loads((tmp_path / "out" / "1" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "lost its worker" in manifest["error"] and pool.tasks == 2


def test_a_bad_job_fails_alone_on_slurm(tiny_sd, tmp_path):
    broken = mismatched_copy(tiny_sd, tmp_path / "broken")
    run = sdflow(tmp_path, "-m", "model=tiny", f"model.path={broken},{tiny_sd}", "steps=2", "hydra.sweep.dir=out",
                 *ON_SLURM)
    assert run.returncode == 1, run.stderr
    assert "1 job(s) of the sweep failed" in run.stderr and "expected shape" in run.stderr
    assert not list((tmp_path / "out" / "0").glob("*.png"))
    (good,) = images(tmp_path / "out").values()
    assert good.parent.name == "1"
    assert_complete(good.parent, good)


def test_a_task_signalled_before_its_time_limit_requeues_itself_with_what_it_finished(tmp_path):
    """USR2 (what Slurm sends signal_delay_s before the time limit, or on preemption): submitit checkpoints the
    task and requeues it; the requeued task runs only the units not finished, and no job is lost or run twice."""
    from sdflow.run.remote.slurm_pool import SubmititPool

    jobs = jobs_for([["model=tiny", "steps=60", f"seed={seed}"] for seed in range(6)])
    pool = SubmititPool(str(tmp_path / "submitit" / "%j"), workers=1, retries=0, parameters=PARAMETERS)
    sweep = RemoteSweep(jobs, max_batch=1, pool=pool, progress=False)  # six units, one task runs them in turn
    sweep.start()
    ((task, _),) = pool.running
    log = Path(str(task.paths.stderr))
    deadline = time.monotonic() + 120
    while not (log.exists() and "1 of 6 units done" in log.read_text()):
        assert time.monotonic() < deadline, "the task did not finish its first unit in time"
        time.sleep(0.05)
    subprocess.run(["scancel", "--signal=USR2", task.job_id], check=True)
    try:
        results = [sweep.run_job(num, tmp_path / "out" / str(num)) for num in range(6)]
    finally:
        sweep.close()
    resumed = re.search(r"resuming after (\d) of 6 units", log.read_text())
    assert resumed is not None and pool.tasks == 1, log.read_text()[-3000:]  # requeued by Slurm, not resubmitted
    before = int(resumed.group(1))
    workers = [result.worker for result in results]
    assert 1 <= before < 6 and len(set(workers[:before])) == 1 and len(set(workers[before:])) == 1
    assert workers[0] != workers[-1]  # the first units' outcomes came from the first run: not run again
    for result in results:
        (path,) = result.saved
        assert_complete(path.parent, path)
    assert len({pixels(result.saved[0]).tobytes() for result in results}) == 6


def test_a_failing_sweep_on_slurm_refused_before_submitting(tmp_path):
    run = sdflow(tmp_path, "-m", "model=tiny", "steps=0,2", "hydra.sweep.dir=out", *ON_SLURM)
    assert run.returncode == 2 and "steps" in run.stderr
    assert not (tmp_path / "out").exists()  # nothing submitted: no sweep folder, no submitit folder in it
