"""Every door into the engine keeps the same guarantees: the ``sdflow`` command, a sweep under sdflow's or Hydra's
basic sweeper, the Ray/Slurm launchers (submitit's local executor), the web API, ``reproduce`` and Python.

One test per guarantee, each door a case of it:
- runtime: a GPU runtime on a machine without one is refused before anything loads or any folder exists;
- no overwrite: a rerun into the same folder keeps the earlier files;
- NaN stop: a node that makes NaN stops its run there, naming the node, and writes no image;
- comma: a bare comma in a swept prompt is refused, a comma in one run's prompt is text;
- resolvers: nothing given on a command line (``hydra.*`` included) or in a request reads the environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sdflow.api import run_workflow
from sdflow.engine import NodeRunError, ValidationError
from sdflow.reproduce import reproduce
from sdflow.run import compose_config
from sdflow.run.manifest import read_manifest
from sdflow.ui.http import create_api
from sdflow.ui.jobs import JobQueue
from sdflow.ui.limits import Folders

from web_client import wait

SECRET = "hunter2-secret"
SLURM = ["hydra/launcher=sdflow_slurm", "hydra.launcher.cluster=local", "hydra.launcher.gpus_per_node=0",
         "hydra.launcher.cpus_per_task=1"]


def sdflow(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", "SECRET_FOR_TEST": SECRET, **(env or {})}
    return subprocess.run([sys.executable, "-m", "sdflow.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=400)


def pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.png") if not p.name.startswith("grid"))  # grid.png, a rerun's grid_1.png


def prompt_of(png: Path) -> str:
    with Image.open(png) as image:
        return json.loads(image.text["sdflow"])["image"]["values"]["prompt.prompt"]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    jobs = JobQueue(Folders(root / "outputs", root / "uploads"))
    return TestClient(create_api(jobs), base_url="http://127.0.0.1"), jobs


@pytest.fixture(scope="module")
def nan_model(tiny_sd, tmp_path_factory) -> Path:
    """The tiny model with a NaN in its VAE decoder: valid on disk (validation passes), NaN once it decodes."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("nan") / "model"
    shutil.copytree(tiny_sd, folder)
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["decoder.conv_out.bias"][0] = float("nan")
    save_file(tensors, weights)
    return folder


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A PNG sdflow made (the tiny model), for the reproduce door."""
    folder = tmp_path_factory.mktemp("made")
    return run_workflow("text2img", ["model=tiny", "steps=2", "seed=4"], output_dir=folder).saved[0]


# --- runtime: checked before anything loads or any folder exists ----------------------------------------------

RUNTIME_DOORS = {
    "command": ["model=tiny", "runtime=cuda"],
    "sweep": ["-m", "model=tiny", "runtime=cuda", "seed=0,1"],
    "basic sweeper": ["-m", "hydra/sweeper=basic", "model=tiny", "runtime=cuda", "seed=0,1"],
}


@pytest.mark.parametrize("door", RUNTIME_DOORS)
def test_a_gpu_runtime_without_a_gpu_is_refused_at_the_command_and_its_sweeps(tmp_path, door):
    run = sdflow(tmp_path, *RUNTIME_DOORS[door])
    assert run.returncode == 2, run.stderr
    assert "runtime.device" in run.stderr and "finds no CUDA GPU" in run.stderr
    assert list(tmp_path.iterdir()) == []  # no run folder, nothing written


def test_a_gpu_runtime_without_a_gpu_is_refused_by_the_web_api_reproduce_and_python(api, made, tmp_path):
    client, jobs = api
    response = client.post("/api/jobs", json={"workflow": "text2img", "overrides": ["runtime=cuda"]})
    assert response.status_code == 422, response.text  # not queued, as the command refuses it
    assert [p["field"] for p in response.json()["problems"]] == ["runtime.device"]
    with pytest.raises(ValidationError, match="runtime.device"):
        reproduce(made, ["runtime.device=cuda"], output_dir=tmp_path / "again")
    with pytest.raises(ValidationError, match="runtime.device"):
        run_workflow("text2img", ["model=tiny", "runtime=cuda"], output_dir=tmp_path / "python")
    assert list(tmp_path.iterdir()) == []


# --- no overwrite: a rerun keeps what was there ---------------------------------------------------------------

def test_a_rerun_of_the_command_or_a_sweep_into_the_same_folder_keeps_every_image(tmp_path):
    for prompt in ("a red circle", "a blue square"):
        assert sdflow(tmp_path, "model=tiny", "steps=1", f"prompt={prompt}", "hydra.run.dir=one").returncode == 0
        assert sdflow(tmp_path, "-m", "model=tiny", "steps=1", f"prompt={prompt}", "seed=0,1",
                      "hydra.sweep.dir=sweep").returncode == 0
    assert sorted(prompt_of(p) for p in pngs(tmp_path / "one")) == ["a blue square", "a red circle"]
    assert sorted(prompt_of(p) for p in pngs(tmp_path / "sweep")) == ["a blue square"] * 2 + ["a red circle"] * 2


@pytest.mark.slow
def test_a_rerun_of_a_slurm_sweep_into_the_same_folder_keeps_every_image(tmp_path):
    """The driver of a remote sweep writes what its workers made through the same writer: nothing replaced."""
    pytest.importorskip("submitit")
    for prompt in ("a red circle", "a blue square"):
        run = sdflow(tmp_path, "-m", "model=tiny", "steps=1", f"prompt={prompt}", "seed=0,1", "hydra.sweep.dir=same",
                     *SLURM)
        assert run.returncode == 0, run.stderr
    images = pngs(tmp_path / "same")
    assert sorted(prompt_of(p) for p in images) == ["a blue square"] * 2 + ["a red circle"] * 2
    assert sorted(p.name for p in images if p.parent.name == "0") == ["text2img_000_seed0.png",
                                                                       "text2img_000_seed0_1.png"]
    manifest = read_manifest(tmp_path / "same" / "0")  # the first run's entry is kept under earlier_runs
    assert manifest["status"] == "done" and [i["file"] for i in manifest["images"]] == ["text2img_000_seed0_1.png"]
    assert [i["file"] for i in manifest["earlier_runs"][0]["images"]] == ["text2img_000_seed0.png"]


def test_two_web_servers_in_the_same_second_and_two_reproductions_keep_every_file(made, tmp_path, monkeypatch):
    import sdflow.ui.jobs

    monkeypatch.setattr(sdflow.ui.jobs.time, "strftime", lambda pattern: "20261207-120000")  # the same job ids
    folders = Folders(tmp_path / "outputs", tmp_path / "uploads")
    texts = []
    for colour in ("red", "blue"):  # two servers started afresh: each numbers its jobs from 1
        client = TestClient(create_api(JobQueue(folders)), base_url="http://127.0.0.1")
        text = (Path(sdflow.ui.jobs.__file__).parent.parent / "workflows" / "text2img.yaml").read_text()
        texts.append(text.replace("prefix: text2img", f"prefix: {colour}"))
        submitted = client.post("/api/jobs", json={"workflow_yaml": texts[-1], "overrides": ["model=tiny", "steps=1"]})
        assert wait(client, submitted.json()["id"])["status"] == "done"
    red, blue = sorted((tmp_path / "outputs" / "ui").iterdir())
    assert (red.name, blue.name) == ("20261207-120000-0001", "20261207-120000-0001_2")
    assert [(red / "submitted.yaml").read_text(), (blue / "submitted.yaml").read_text()] == texts
    assert [p.name for p in pngs(red)] == ["red_000_seed0.png"] and [p.name for p in pngs(blue)] == ["blue_000_seed0.png"]

    first = reproduce(made, output_dir=tmp_path / "again")
    second = reproduce(made, output_dir=tmp_path / "again")
    assert (first.remade.name, second.remade.name) == (made.name, made.stem + "_1.png")
    assert sorted(p.name for p in (tmp_path / "again").glob("*.yaml")) == [
        f"{made.stem}.workflow.yaml", f"{made.stem}.workflow_1.yaml"]


# --- NaN stop: the node that made NaN is named, no image is written -------------------------------------------

NAN_DOORS = {"command": [], "sweep": ["-m", "seed=0,1"], "basic launcher": ["-m", "seed=0,1", "hydra/launcher=basic"]}


@pytest.mark.parametrize("door", NAN_DOORS)
def test_nan_stops_at_the_node_that_made_it_at_the_command_and_its_sweeps(nan_model, tmp_path, door):
    args = ["model=tiny", f"model.path={nan_model}", "steps=1", "hydra.run.dir=out", "hydra.sweep.dir=out"]
    run = sdflow(tmp_path, *NAN_DOORS[door], *args)
    assert run.returncode == 1, run.stderr
    assert "node 'decode' (decode) failed: FloatingPointError: produced NaN/Inf values" in run.stderr
    assert pngs(tmp_path) == []
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("manifest.json")]
    assert manifests and all(m["status"] == "failed" and m["node"] == "decode" for m in manifests)


@pytest.mark.slow
def test_nan_stops_at_the_node_that_made_it_on_a_slurm_worker(nan_model, tmp_path):
    pytest.importorskip("submitit")
    run = sdflow(tmp_path, "-m", "model=tiny", f"model.path={nan_model}", "steps=1", "seed=0,1",
                 "hydra.sweep.dir=out", *SLURM)
    assert run.returncode == 1, run.stderr
    assert "2 job(s) of the sweep failed" in run.stderr and "node 'decode'" in run.stderr
    assert pngs(tmp_path) == []
    assert all(read_manifest(tmp_path / "out" / str(n))["node"] == "decode" for n in range(2))


def test_nan_stops_at_the_node_that_made_it_in_the_web_api_reproduce_and_python(nan_model, made, tmp_path,
                                                                                monkeypatch):
    with pytest.raises(NodeRunError, match="node 'decode'.*NaN"):
        run_workflow("text2img", ["model=tiny", f"model.path={nan_model}", "steps=1"], output_dir=tmp_path / "python")
    with pytest.raises(NodeRunError, match="node 'decode'.*NaN"):
        reproduce(made, [f"model.source={nan_model}"], output_dir=tmp_path / "again", check_models=False)
    # The server loads builtin:NAME models only: here builtin:tiny is the NaN copy (a fresh SDFLOW_HOME).
    home = tmp_path / "home"
    (home / "builtin").mkdir(parents=True)
    shutil.copytree(nan_model, home / "builtin" / "tiny-v1")
    monkeypatch.setenv("SDFLOW_HOME", str(home))
    client = TestClient(create_api(JobQueue(Folders(tmp_path / "ui", tmp_path / "uploads"))),
                        base_url="http://127.0.0.1")
    job = wait(client, client.post("/api/jobs", json={"workflow": "text2img", "values": {"model": "tiny",
                                                                                         "steps": 1}}).json()["id"])
    assert job["status"] == "failed" and "node 'decode'" in job["error"] and "NaN" in job["error"]
    assert pngs(tmp_path) == [] or all(p.is_relative_to(home) for p in pngs(tmp_path))


# --- comma: a bare comma never splits a prompt silently -------------------------------------------------------

COMMA_DOORS = {"sdflow sweeper": [], "basic sweeper": ["hydra/sweeper=basic"], "slurm launcher": SLURM}


@pytest.mark.parametrize("door", COMMA_DOORS)
def test_a_bare_comma_in_a_swept_prompt_is_refused_under_any_sweeper_and_launcher(tmp_path, door):
    run = sdflow(tmp_path, "-m", "model=tiny", "prompt=a small red circle, blue background", "seed=0,1",
                 *COMMA_DOORS[door])
    assert run.returncode == 2, run.stderr
    assert "a comma in a swept text value is ambiguous" in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_comma_in_one_runs_prompt_is_text_at_the_web_api_reproduce_and_python(api, made, tmp_path):
    client, _ = api
    prompt = "a small red circle, blue background"
    job = wait(client, client.post("/api/jobs", json={"workflow": "text2img",
                                                      "overrides": [f"prompt={prompt}", "steps=1"]}).json()["id"])
    assert job["status"] == "done" and job["images"][0]["metadata"]["image"]["values"]["prompt.prompt"] == prompt
    again = reproduce(made, [f"prompt={prompt}"], output_dir=tmp_path / "again")
    assert prompt_of(again.remade) == prompt
    assert prompt_of(run_workflow("text2img", ["model=tiny", "steps=1", f"prompt={prompt}"],
                                  output_dir=tmp_path / "python").saved[0]) == prompt


# --- resolvers: nothing given reads the environment -----------------------------------------------------------

RESOLVER_DOORS = {
    "command value": ["prompt=${oc.env:SECRET_FOR_TEST}"],
    "command hydra.run.dir": ["hydra.run.dir=out/${oc.env:SECRET_FOR_TEST}"],
    "sweep hydra.sweep.dir": ["-m", "seed=0,1", "hydra.sweep.dir=out/${oc.env:SECRET_FOR_TEST}"],
    "basic sweeper value": ["-m", "hydra/sweeper=basic", "seed=0,1", "negative_prompt=${oc.env:SECRET_FOR_TEST}"],
}


@pytest.mark.parametrize("door", RESOLVER_DOORS)
def test_no_resolver_given_on_the_command_line_reads_the_environment(tmp_path, door):
    run = sdflow(tmp_path, *RESOLVER_DOORS[door], "model=tiny", "steps=1")
    assert run.returncode == 2, run.stderr
    assert "oc.env" in run.stderr and SECRET not in run.stderr + run.stdout
    assert list(tmp_path.iterdir()) == []


def test_hydras_own_time_resolver_still_names_run_folders(tmp_path):
    run = sdflow(tmp_path, "model=tiny", "steps=1", "hydra.run.dir=out/${now:%Y}")
    assert run.returncode == 0, run.stderr
    assert [p.parent.name for p in pngs(tmp_path)] == [time.strftime("%Y")]


def test_no_resolver_reaches_the_environment_from_the_web_api_reproduce_or_python(api, made, tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_FOR_TEST", SECRET)
    client, _ = api
    response = client.post("/api/jobs", json={"workflow": "text2img", "overrides": ["prompt=${oc.env:SECRET_FOR_TEST}"]})
    assert response.status_code == 422 and SECRET not in response.text
    with pytest.raises(ValidationError, match="no resolvers"):
        reproduce(made, ["prompt=${oc.env:SECRET_FOR_TEST}"], output_dir=tmp_path / "again")
    for override in ("prompt=${oc.env:SECRET_FOR_TEST}", "hydra.run.dir=${oc.env:SECRET_FOR_TEST}"):
        with pytest.raises(ValidationError, match="oc.env"):
            compose_config(["model=tiny", override])
    assert not (tmp_path / "again").exists()
