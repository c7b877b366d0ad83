"""Sweeps on Ray actors and on Slurm array tasks (submitit's local executor) give the local launcher's sweep.

Same job folders, pixels, metadata, grid and exit status; each worker loads each model once; a worker
killed mid-sweep loses no job and writes none twice; a job that fails by itself is reported, not retried.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdflow.api import compose_config, plan_workflow
from sdflow.engine import WorkflowError
from sdflow.run.outputs import PendingFile, StaticFile
from sdflow.run.remote import JobOutcome, RemoteSweep, Unit, WorkerLost
from sdflow.run.remote.sweep import retry_or_give_up
from sdflow.run.sweep import Job

from parity import ONE_LEVEL

pytestmark = pytest.mark.slow  # starts a Ray cluster and submitit tasks: about a minute and a half

SWEEP = ["-m", "model=tiny", "steps=2", "seed=0,1,2,3", 'prompt="a red circle","a blue square"', "runtime.max_batch=4"]


def sdflow(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "sdflow.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=400)


def images(folder: Path) -> dict[str, Path]:
    return {f"{p.parent.name}/{p.name}": p for p in sorted(folder.rglob("*.png")) if not p.name.startswith("grid")}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255


def metadata(path: Path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.text["sdflow"])


def assert_same_sweep(ours: Path, theirs: Path) -> None:
    """Same job folders, .hydra files, images (the same batches: the same pixels), same metadata, and a grid."""
    mine, reference = images(ours), images(theirs)
    assert sorted(mine) == sorted(reference) and len(mine) == 8
    for name, path in mine.items():  # batches of 4 here and there: equal
        assert np.array_equal(pixels(path), pixels(reference[name])), name
        assert metadata(path) == metadata(reference[name]), name
        assert_complete(path.parent, path)
        hydra = path.parent / ".hydra"
        assert {p.name for p in hydra.iterdir()} == {"config.yaml", "hydra.yaml", "overrides.yaml"}
        theirs = reference[name].parent / ".hydra"
        assert (hydra / "overrides.yaml").read_text() == (theirs / "overrides.yaml").read_text()
    assert (ours / "grid.png").exists()
    assert not [p for p in ours.rglob("*.tmp")]


def assert_complete(folder: Path, png: Path) -> None:
    """The job folder holds its image once, whole, and a manifest that says so."""
    assert sorted(p.name for p in folder.iterdir() if p.name != ".hydra" and p.suffix != ".log") == \
        sorted([png.name, "manifest.json"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "done"
    assert manifest["images"] == [{"file": png.name, "sha256": hashlib.sha256(png.read_bytes()).hexdigest(),
                                   "node": manifest["images"][0]["node"]}]


def worker_loads(sweep_dir: Path) -> dict[str, int]:
    """Each worker's component-cache loads, as the last job it ran logged them."""
    loads = {}
    for log in sorted(sweep_dir.glob("*/*.log"), key=lambda p: int(p.parent.name)):
        for worker, count in re.findall(r"ran on (.+?) \(pid .*?its component cache: (\d+) loads", log.read_text()):
            loads[worker] = int(count)
    return loads


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory) -> Path:
    """The reference: the same sweep on the local fused launcher."""
    folder = tmp_path_factory.mktemp("local")
    run = sdflow(folder, *SWEEP, "hydra.sweep.dir=out")
    assert run.returncode == 0, run.stderr
    return folder / "out"


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A Ray cluster on this machine (2 CPUs, loopback only, no dashboard), stopped after the module."""
    from sdflow.run.remote.ray_pool import loopback_only

    loopback_only()
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 2**20, logging_level="WARNING",
             _temp_dir=tempfile.mkdtemp(dir=os.environ["RAY_TMPDIR"]))  # short: see conftest
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_a_sweep_on_two_ray_actors_equals_the_local_sweep(ray_cluster, local_sweep, tmp_path):
    run = sdflow(tmp_path, *SWEEP, "hydra.sweep.dir=out", "hydra/launcher=sdflow_ray",
                 f"hydra.launcher.address='{ray_cluster}'", "hydra.launcher.workers=2")
    assert run.returncode == 0, run.stderr
    assert_same_sweep(tmp_path / "out", local_sweep)
    # Two batches of four jobs, one per actor; each actor loaded each of the 5 components once.
    assert worker_loads(tmp_path / "out") == {"ray worker 0": 5, "ray worker 1": 5}
    assert "sweep on 2 ray workers: 100%" in run.stderr and "8/8" in run.stderr


def test_a_ray_sweep_rerun_into_the_same_folder_keeps_the_earlier_images(ray_cluster, tmp_path):
    """Two sweeps into one folder with different prompts: all four images stay (the driver never replaces a file)."""
    for prompt in ("a red circle", "a blue square"):
        run = sdflow(tmp_path, "-m", "model=tiny", "steps=1", "seed=0,1", f"prompt={prompt}", "hydra.sweep.dir=same",
                     "hydra/launcher=sdflow_ray", f"hydra.launcher.address='{ray_cluster}'", "hydra.launcher.workers=1")
        assert run.returncode == 0, run.stderr
    prompts = sorted(metadata(path)["image"]["values"]["prompt.prompt"] for path in images(tmp_path / "same").values())
    assert prompts == ["a blue square"] * 2 + ["a red circle"] * 2


def test_a_gpu_sweep_starts_from_a_driver_without_one_and_stops_once_where_no_worker_has_one(ray_cluster, tmp_path):
    """The driver (a login node, a CPU head) checks all but the hardware; the workers check theirs before loading."""
    import socket

    ray_sweep = ["hydra/launcher=sdflow_ray", f"hydra.launcher.address='{ray_cluster}'", "hydra.launcher.workers=1"]
    bad = sdflow(tmp_path, "-m", "model=tiny", "runtime=cuda", "steps=0,2", "hydra.sweep.dir=bad", *ray_sweep)
    assert bad.returncode == 2 and "steps" in bad.stderr and not (tmp_path / "bad").exists()  # refused on the driver
    run = sdflow(tmp_path, "-m", "model=tiny", "runtime=cuda", "runtime.max_batch=1", "steps=2", "seed=0,1,2,3",
                 "hydra.sweep.dir=out", *ray_sweep)
    assert run.returncode == 1, run.stderr  # submitted (not refused: exit 2), then failed on the worker
    said = run.stdout + run.stderr  # Hydra's log on stdout, the summary on stderr
    assert said.count("stopping the sweep") == 1 and "4 job(s) of the sweep failed" in run.stderr
    first = next(line for line in run.stderr.splitlines() if line.startswith("  - job 0 "))
    assert f"on {socket.gethostname()}) cannot run it" in first and "finds no CUDA GPU" in first
    assert "  - jobs 1, 2, 3: not run: ray worker 0 (pid" in run.stderr  # one line for the jobs never run
    log = (tmp_path / "out" / "0" / "sdflow.log").read_text()
    assert f"on {socket.gethostname()}) cannot run it" in log and "finds no CUDA GPU" in log
    for num in range(4):
        manifest = json.loads((tmp_path / "out" / str(num) / "manifest.json").read_text())
        assert manifest["status"] == "failed" and "CUDA GPU" in manifest["error"] and manifest["images"] == []


def test_a_sweep_on_slurm_array_tasks_equals_the_local_sweep(local_sweep, tmp_path):
    pytest.importorskip("submitit")
    run = sdflow(tmp_path, *SWEEP, "hydra.sweep.dir=out", "hydra/launcher=sdflow_slurm",
                 "hydra.launcher.cluster=local", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1")
    assert run.returncode == 0, run.stderr
    assert_same_sweep(tmp_path / "out", local_sweep)
    loads = worker_loads(tmp_path / "out")
    assert len(loads) == 2 and set(loads.values()) == {5}  # one array task per batch, one load per component
    assert len(list((tmp_path / "out" / ".submitit").glob("*/*_result.pkl"))) == 2


def jobs_for(overrides_per_job: list[list[str]]) -> list[Job]:
    jobs = []
    for num, overrides in enumerate(overrides_per_job):
        config = compose_config(overrides)
        jobs.append(Job(num, tuple(overrides), config, plan_workflow(config)))
    return jobs


def mismatched_copy(model: Path, folder: Path) -> Path:
    """A copy of ``model`` that passes validation but fails to load: one UNet weight's shape is transposed."""
    shutil.copytree(model, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    entry = next(v for k, v in header.items() if k != "__metadata__" and len(set(v["shape"])) == 2)
    entry["shape"] = entry["shape"][::-1]
    data[8:8 + length] = json.dumps(header, separators=(",", ":")).encode().ljust(length)
    weights.write_bytes(bytes(data))
    return folder


def test_a_killed_actor_loses_no_job_and_a_bad_job_fails_alone(ray_cluster, local_sweep, tiny_sd, tmp_path, caplog):
    from sdflow.run.remote.ray_pool import RayPool

    broken = mismatched_copy(tiny_sd, tmp_path / "broken")
    sweep_jobs = [["model=tiny", "steps=2", f"seed={seed}", f"prompt={prompt}"]
                  for seed in range(4) for prompt in ("a red circle", "a blue square")]
    jobs = jobs_for(sweep_jobs + [["model=tiny", f"model.path={broken}", "steps=2"]])
    pool = RayPool(address=ray_cluster, workers=2)
    sweep = RemoteSweep(jobs, max_batch=2, pool=pool, progress=False)
    assert [len(unit.jobs) for unit in sweep.units] == [2, 2, 2, 2, 1]
    sweep.start()
    # a worker in the middle of a batch (its process titled so while it runs one), killed: that batch must run again
    (victim,) = wait_for(lambda: [pid for pid, title in descendants(os.getpid()).items()
                                  if title.startswith("ray::SweepWorker.run")][:1], 120, "a worker running a batch")
    os.kill(victim, signal.SIGKILL)
    results = {}
    try:
        for num in range(9):
            try:
                results[num] = sweep.run_job(num, tmp_path / "out" / str(num))
            except WorkflowError as exc:
                results[num] = exc
    finally:
        sweep.close()
    assert re.search(r"ray worker \d died", caplog.text)
    assert sorted(unit.attempts for unit in sweep.units) == [0, 0, 0, 0, 1]  # one batch ran twice, the bad job once
    assert isinstance(results[8], WorkflowError) and "expected shape" in str(results[8])
    assert not list((tmp_path / "out" / "8").glob("*.png"))
    reference = images(local_sweep)
    for num in range(8):  # the local sweep's jobs, in the same order: the same pixels, each written once
        (path,) = results[num].saved
        assert_complete(path.parent, path)
        assert np.abs(pixels(path) - pixels(reference[f"{num}/{path.name}"])).max() <= ONE_LEVEL  # other batches


def test_a_killed_slurm_task_runs_again_and_writes_each_job_once(local_sweep, tmp_path, caplog):
    pytest.importorskip("submitit")
    from sdflow.run.remote.slurm_pool import SubmititPool

    jobs = jobs_for([["model=tiny", "steps=2", "seed=0", f"prompt={p}"] for p in ("a red circle", "a blue square")])
    pool = SubmititPool(str(tmp_path / "submitit" / "%j"), cluster="local", parameters={"gpus_per_node": 0})
    sweep = RemoteSweep(jobs, max_batch=4, pool=pool, progress=False)
    sweep.start()
    ((task, _),) = pool.running
    for pid in [*descendants(task._process.pid), task._process.pid]:  # scancel -s KILL: no result, whatever its stage
        os.kill(pid, signal.SIGKILL)  # (a SIGINT, submitit's cancel, can miss a process still starting under load)
    try:
        results = [sweep.run_job(num, tmp_path / "out" / str(num)) for num in range(2)]
    finally:
        sweep.close()
    assert "ended without a result" in caplog.text and pool.tasks == 2 and sweep.units[0].attempts == 1
    reference = images(local_sweep)
    for num, result in enumerate(results):
        (path,) = result.saved
        assert_complete(path.parent, path)
        assert np.abs(pixels(path) - pixels(reference[f"{num}/{path.name}"])).max() <= ONE_LEVEL  # other batches


class FakePool:
    """A pool whose workers die on command: outcomes of units are made up, no process is started."""

    def __init__(self, deaths: int, retries: int):
        self.deaths, self.retries, self.pending = deaths, retries, deque()

    def start(self, units, max_batch):
        self.pending.extend(units)

    def poll(self, timeout):
        if not self.pending:
            return []
        unit = self.pending.popleft()
        if self.deaths:
            self.deaths -= 1
            return retry_or_give_up(unit, "worker died", self.retries, self.pending)
        # A unit's outcome arriving twice (a worker thought dead finishing late) must not write twice.
        return [JobOutcome(job.num, [PendingFile("a.png", StaticFile(b"png"), "save")]) for job in unit.jobs] * 2

    def close(self):
        pass


def test_retries_end_and_a_late_duplicate_is_not_written_twice(tmp_path):
    jobs = jobs_for([["model=tiny", "steps=1", f"seed={seed}"] for seed in range(2)])
    sweep = RemoteSweep(jobs, max_batch=2, pool=FakePool(deaths=1, retries=1), progress=False)
    sweep.start()
    assert [p.name for p in sweep.run_job(0, tmp_path / "0").saved] == ["a.png"]
    assert [p.name for p in sweep.run_job(1, tmp_path / "1").saved] == ["a.png"]
    assert not sweep.outcomes  # the duplicates were dropped
    given_up = RemoteSweep(jobs, max_batch=2, pool=FakePool(deaths=2, retries=1), progress=False)
    given_up.start()
    with pytest.raises(WorkerLost, match="lost its worker 2 time"):
        given_up.run_job(0, tmp_path / "lost")
    again = RemoteSweep(jobs, max_batch=2, pool=FakePool(deaths=0, retries=1), progress=False)
    again.start()  # a rerun into the same folders keeps the earlier files: never replaced, the new one numbered
    assert [p.name for p in again.run_job(0, tmp_path / "0").saved] == ["a_1.png"]
    assert sorted(p.name for p in (tmp_path / "0").glob("*.png")) == ["a.png", "a_1.png"]
    assert Unit(jobs).attempts == 0


# A cluster someone else started: `ray start --head` on this machine, joined with hydra.launcher.address=auto --------

def descendants(pid: int) -> dict[int, str]:
    """{pid: command line} of every process below ``pid`` (from /proc: Ray's workers retitle themselves)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = {}, list(children.get(pid, []))
    while todo:
        child = todo.pop()
        try:
            found[child] = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        todo += children.get(child, [])
    return found


def sweep_workers(head: subprocess.Popen) -> dict[int, str]:
    return {pid: title for pid, title in descendants(head.pid).items() if title.startswith("ray::SweepWorker")}


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"waited {timeout} s for {what}")


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head` on 127.0.0.1 as a user would start it, its address recorded where `auto` finds it (in
    the session's RAY_TMPDIR: see conftest)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}  # loopback only
    ray_command = Path(sys.executable).with_name("ray")
    log_path = tmp_path_factory.mktemp("ray-head") / "head.log"
    log = open(log_path, "w")
    head = subprocess.Popen([str(ray_command), "start", "--head", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", "--disable-usage-stats", "--block"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    recorded = Path(os.environ["RAY_TMPDIR"]) / "ray" / "ray_current_cluster"

    def stop():
        head.terminate()  # --block: stops the processes it started
        head.wait(timeout=60)
        log.close()
        if recorded.exists() and recorded.read_text().strip() == f"127.0.0.1:{port}":
            recorded.unlink()

    try:
        wait_for(lambda: recorded.exists() and recorded.read_text().strip() == f"127.0.0.1:{port}", 90, "ray start")
    except AssertionError as exc:
        stop()
        raise AssertionError(f"{exc}; ray start printed: {log_path.read_text()[-3000:]}") from None
    yield head
    stop()


ON_RAY_HEAD = ["hydra/launcher=sdflow_ray", "hydra.launcher.address=auto", "hydra.launcher.workers=2"]


def sdflow_in_background(cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "sdflow.cli", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_sweep_joins_a_running_cluster_and_a_worker_killed_mid_batch_loses_nothing(ray_head, local_sweep, tmp_path):
    run = sdflow_in_background(tmp_path, *SWEEP, "hydra.sweep.dir=out", *ON_RAY_HEAD)
    (victim,) = wait_for(lambda: [pid for pid, title in sweep_workers(ray_head).items()
                                  if title.startswith("ray::SweepWorker.run")][:1], 120, "a worker running a batch")
    os.kill(victim, signal.SIGKILL)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    assert re.search(r"ray worker \d died .*running them again \(try 2 of 3\)", out + err)
    assert_same_sweep(tmp_path / "out", local_sweep)  # the lost batch ran again: the same pixels, each job once
    wait_for(lambda: sweep_workers(ray_head) == {}, 30, "the sweep's workers to be stopped")  # sdflow's actors go
    assert ray_head.poll() is None  # the cluster stays


def test_ctrl_c_on_a_sweep_on_a_running_cluster_lists_what_was_saved_and_stops_its_workers(ray_head, tmp_path):
    run = sdflow_in_background(tmp_path, "-m", "model=tiny", "steps=100", "seed=0,1,2,3,4,5,6,7", "runtime.max_batch=1",
                               "hydra.sweep.dir=out", *ON_RAY_HEAD)
    wait_for(lambda: list((tmp_path / "out").glob("*/*.png")), 120, "the first image")
    assert len(sweep_workers(ray_head)) == 2
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    saved = sorted((tmp_path / "out").glob("*/*.png"))
    assert f"sdflow: interrupted; {len(saved)} image(s) were saved before it" in err and len(saved) < 8
    assert all(str(path) in err for path in saved)
    wait_for(lambda: sweep_workers(ray_head) == {}, 30, "the sweep's workers to be stopped")
    assert ray_head.poll() is None
