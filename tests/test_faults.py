"""Nothing lost, nothing silent: faults are one line naming the node, runs never share a folder, secrets stay out."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from sdflow.cli.command import Command


def sdflow(cwd, *args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SECRET_FOR_TEST": "hunter2"}
    return subprocess.run([sys.executable, "-m", "sdflow.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, **kwargs)


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    base = str(tmp_path / "outputs" / "12-00-00")
    command = Command()
    assert command.claim_folder(base) == base
    assert command.claim_folder(base) == base  # the same process reads its own folder again
    os.mkdir(base + "_2")  # another process took the next name meanwhile
    assert Command().claim_folder(base) == base + "_3"  # as a second process would start


def test_two_commands_at_once_write_two_images(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "sdflow.cli", "model=tiny", "steps=1", "hydra.run.dir=${sdflow_new_folder:out}"]
    runs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    assert [r.wait(timeout=300) for r in runs] == [0, 0]
    assert sorted(p.parent.name for p in tmp_path.rglob("*.png")) == ["out", "out_2"]


def test_a_run_time_fault_is_one_line_naming_the_node_and_field(tiny_sd, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    # A whole file (a truncated one is caught at validation) whose tensor does not fit the UNet's config.
    tensors = load_file(weights)
    tensors["conv_in.weight"] = tensors["conv_in.weight"].reshape(tensors["conv_in.weight"].shape[0], -1, 1, 1)
    save_file(tensors, weights)
    run = sdflow(tmp_path, "model=tiny", f"model.path={broken}", "steps=1")
    assert run.returncode == 1
    assert "Traceback" not in run.stderr and "Error executing job" not in run.stderr
    (line,) = [x for x in run.stderr.splitlines() if x.startswith("sdflow: ")]
    assert "node 'model', field 'source'" in line and "SDFLOW_DEBUG=1" in line
    debug = subprocess.run([sys.executable, "-m", "sdflow.cli", "model=tiny", f"model.path={broken}", "steps=1"],
                           cwd=tmp_path, env={**os.environ, "SDFLOW_DEBUG": "1"}, capture_output=True, text=True)
    assert "Traceback" in debug.stderr


def test_a_resolver_on_the_command_line_is_refused_like_in_a_workflow_file(tmp_path):
    run = sdflow(tmp_path, "model=tiny", "prompt=${oc.env:SECRET_FOR_TEST}")
    assert run.returncode == 2
    assert "command line, field 'prompt'" in run.stderr and "no resolvers" in run.stderr
    assert "hunter2" not in run.stderr + run.stdout
    assert not list(tmp_path.rglob("*.png")) and not (tmp_path / "outputs").exists()
    sweep = sdflow(tmp_path, "-m", "model=tiny", "seed=0,1", "negative_prompt=${oc.env:SECRET_FOR_TEST}")
    assert sweep.returncode == 2 and "hunter2" not in sweep.stderr + sweep.stdout
    assert not (tmp_path / "multirun").exists()


def test_ctrl_c_says_what_was_saved_and_exits_130(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # The chain's first image is saved as soon as it exists; a long upscale leaves time to interrupt.
    run = subprocess.Popen([sys.executable, "-m", "sdflow.cli", "workflow=chain", "model=tiny", "steps=2",
                            "upscale_steps=400", "hydra.run.dir=out"], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list(tmp_path.glob("out/2_img2img*.png")) and time.time() < deadline and run.poll() is None:
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "interrupted; 2 image(s) were saved before it" in stderr
    assert "1_text2img_000_seed0.png" in stderr and "2_img2img_000_seed0.png" in stderr
    assert "Traceback" not in stderr


def test_ctrl_c_is_answered_within_seconds_while_torch_is_inside_one_long_operation(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    # A 512x512 input: the tiny VAE's attention over its 256x256 latent is one torch operation of tens of seconds
    # (Python sees a signal only between two of its lines: before, Ctrl-C waited 15-45 s for the encode to end).
    Image.fromarray((np.random.RandomState(0).rand(512, 512, 3) * 255).astype("uint8")).save(tmp_path / "big.png")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "sdflow.cli", "workflow=img2img", "model=tiny", "image=big.png",
                            "steps=1", "strength=1.0", "hydra.run.dir=out"], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    manifest = tmp_path / "out" / "manifest.json"
    deadline = time.time() + 120
    while not manifest.exists() and time.time() < deadline and run.poll() is None:
        time.sleep(0.1)
    time.sleep(8)  # the models are loaded and the encode has begun
    assert run.poll() is None
    run.send_signal(signal.SIGINT)
    sent = time.time()
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert time.time() - sent < 6, f"Ctrl-C answered after {time.time() - sent:.1f} s"
    assert "interrupted; 0 image(s) were saved before it" in stderr and "Traceback" not in stderr
    assert json.loads(manifest.read_text())["status"] == "interrupted"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".hydra", "manifest.json", "sdflow.log"]  # no image


def test_a_gpu_runtime_without_a_gpu_is_a_validation_error_with_the_rest(tmp_path, monkeypatch):
    import pytest
    import torch

    from sdflow.api import run_workflow
    from sdflow.engine import ValidationError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValidationError) as excinfo:
        run_workflow("text2img", ["model=tiny", "runtime=cuda", "steps=-1"], output_dir=tmp_path / "out")
    message = str(excinfo.value)
    assert "runtime.device" in message and "field 'steps'" in message  # both at once
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_cannot_be_made_is_refused_before_anything_runs(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("in the way")
    for args in (["hydra.run.dir=afile/run"], ["-m", "seed=0,1", "hydra.sweep.dir=afile/sweep"]):
        run = sdflow(tmp_path, "model=tiny", "steps=1", *args)
        assert run.returncode == 2 and "is not a folder" in run.stderr, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing made
    from sdflow.run import output_folder_problem

    monkeypatch.setattr(os, "access", lambda path, mode: False)  # a read-only folder (root could write anyway)
    problem = output_folder_problem(str(tmp_path / "outputs" / "${now:%H}"), "hydra.run.dir")
    assert "cannot be written" in problem.message and problem.field == "hydra.run.dir"
    from sdflow.engine import ValidationError
    from sdflow.api import run_workflow
    import pytest

    with pytest.raises(ValidationError, match="field 'prefix'"):
        run_workflow(str(write_flow_with_prefix(tmp_path, "../escape")), ["model=tiny"], output_dir=tmp_path / "o")


def write_flow_with_prefix(folder, prefix):
    source = open(os.path.join(os.path.dirname(__file__), "..", "sdflow", "workflows", "text2img.yaml")).read()
    flow = folder / "prefix.yaml"
    flow.write_text(source.replace("prefix: text2img", f"prefix: '{prefix}'"))
    return flow
