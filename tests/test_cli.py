"""The sdflow command, run as a user runs it: one image, a 4-job sweep in one process, a broken workflow."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest


def sdflow(tmp_path, *args):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run([sys.executable, "-m", "sdflow.cli", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def test_one_image_lands_in_the_hydra_run_folder(tmp_path):
    run = sdflow(tmp_path, "workflow=text2img", "prompt=a lighthouse, at dusk", "seed=7", "steps=3")  # a comma is text
    assert run.returncode == 0, run.stderr
    images = list((tmp_path / "outputs").rglob("*.png"))
    assert [p.name for p in images] == ["text2img_000_seed7.png"]


@pytest.mark.parametrize("launcher, stats_per_job", [
    ("sdflow", [(5, 0)] * 4),  # fused: the four jobs share one batch, so the components are asked for once
    ("basic", [(5, 0), (5, 5), (5, 10), (5, 15)]),  # one by one: every later job hits the cache
])
def test_multirun_sweep_of_four_jobs_loads_each_weight_once(tmp_path, launcher, stats_per_job):
    run = sdflow(tmp_path, "-m", "workflow=text2img", "seed=0,1", "guidance=5,7.5", "steps=2", f"hydra/launcher={launcher}")
    assert run.returncode == 0, run.stderr
    images = sorted((tmp_path / "multirun").rglob("*.png"))
    grids = [p for p in images if p.name == "grid.png"]
    jobs = [p for p in images if p.name != "grid.png"]
    assert len(grids) == 1 and {p.parent for p in jobs} == {grids[0].parent / n for n in "0123"}
    assert len(jobs) == 4  # plus the sweep's grid.png beside the job folders
    stats = re.findall(r"component cache: (\d+) loads, (\d+) hits", run.stdout + run.stderr)
    assert [tuple(map(int, s)) for s in stats] == stats_per_job


def test_broken_workflow_exits_non_zero_and_creates_no_folder(tmp_path):
    flow = tmp_path / "broken.yaml"
    source = open(os.path.join(os.path.dirname(__file__), "..", "sdflow", "workflows", "text2img.yaml")).read()
    flow.write_text(source.replace("type: denoise", "type: denoize").replace("steps: ${steps}", "steps: -3"))
    run = sdflow(tmp_path, f"workflow={flow}")
    assert run.returncode != 0
    assert f"{flow}:" in run.stderr and "node 'denoise'" in run.stderr and "did you mean 'denoise'" in run.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def test_a_bad_value_in_one_sweep_job_stops_the_whole_sweep_before_anything_runs(tmp_path):
    run = sdflow(tmp_path, "-m", "workflow=text2img", "steps=2,-1")
    assert run.returncode != 0
    assert "steps=-1" in run.stderr and "field 'steps'" in run.stderr and "expected a value >= 1" in run.stderr
    assert not (tmp_path / "multirun").exists()


def test_the_readme_main_command_draws_what_its_prompt_says(tmp_path):
    import shlex
    from pathlib import Path

    from PIL import Image

    from sdflow.world.judge import judge

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    (line,) = [x for x in readme.splitlines() if x.startswith("bash scripts/install.sh && .venv/bin/sdflow ")]
    args = shlex.split(line.split(".venv/bin/sdflow ", 1)[1])
    assert args[0] == "prompt=a large yellow triangle on the right, purple background"  # what is judged below
    run = sdflow(tmp_path, *args)
    assert run.returncode == 0, run.stderr
    (image,) = (tmp_path / "outputs").rglob("*.png")
    reading = judge(Image.open(image))
    assert (reading.size, reading.colour, reading.shape, reading.position, reading.background) == (
        "large", "yellow", "triangle", "right", "purple"), reading


def test_users_own_config_and_workflow_folders_and_no_shadowing_by_a_folder(tmp_path):
    (tmp_path / "myconf" / "model").mkdir(parents=True)
    (tmp_path / "myconf" / "model" / "mine.yaml").write_text(
        "path: builtin:tiny\nupscaler: builtin:tiny-x4\nwidth: 64\nheight: 64\n")
    (tmp_path / "flows").mkdir()
    source = open(os.path.join(os.path.dirname(__file__), "..", "sdflow", "workflows", "text2img.yaml")).read()
    (tmp_path / "flows" / "mine.yaml").write_text(source.replace("prefix: text2img", "prefix: my_own"))
    (tmp_path / "text2img").mkdir()  # a folder named like a built-in workflow must not shadow it
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SDFLOW_WORKFLOW_PATH": str(tmp_path / "flows")}
    run = subprocess.run([sys.executable, "-m", "sdflow.cli", "--config-dir", "myconf", "model=mine", "workflow=mine",
                          "steps=1", "hydra.run.dir=a"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert [p.name for p in (tmp_path / "a").glob("*.png")] == ["my_own_000_seed0.png"]
    run = subprocess.run([sys.executable, "-m", "sdflow.cli", "model=tiny", "workflow=text2img", "steps=1",
                          "hydra.run.dir=b"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert [p.name for p in (tmp_path / "b").glob("*.png")] == ["text2img_000_seed0.png"]
    listed = subprocess.run([sys.executable, "-m", "sdflow.cli", "--help"], env=env, capture_output=True, text=True)
    assert "  mine " in listed.stdout and "  text2img " in listed.stdout


def test_help_says_what_sdflow_does_without_importing_torch_or_hydra(tmp_path):
    run = sdflow(tmp_path, "--help")
    assert run.returncode == 0
    assert run.stdout.startswith("sdflow: Stable Diffusion as declarative YAML workflows")
    assert "  chain " in run.stdout and "  prompt " in run.stdout and "--hydra-help" in run.stdout
    assert "${" not in run.stdout and "powered by Hydra" not in run.stdout
    check = ("import sys; sys.argv = ['sdflow', '--help']; from sdflow.cli import main; main(); "
             "print(sorted(m for m in ('torch', 'diffusers', 'hydra', 'transformers') if m in sys.modules))")
    imported = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path)
    assert imported.stdout.strip().splitlines()[-1] == "[]"  # answers at once: nothing heavy imported


def test_reproduce_makes_an_image_again_and_weighted_prompts_need_no_quotes(tmp_path):
    run = sdflow(tmp_path, "model=tiny", "steps=2", "prompt=a (red:1.2) circle, [blue] background", "hydra.run.dir=a")
    assert run.returncode == 0, run.stderr
    (image,) = (tmp_path / "a").glob("*.png")
    again = sdflow(tmp_path, "reproduce", str(image))
    assert again.returncode == 0, again.stderr
    assert "same pixels as" in again.stderr + again.stdout
    missing = sdflow(tmp_path, "reproduce", str(tmp_path / "nothere.png"))
    assert missing.returncode == 2 and "nothere.png" in missing.stderr
