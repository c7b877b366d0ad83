"""The sdflow command, run as a user runs it: one image, a 4-job sweep in one process, a broken workflow."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def sdflow(tmp_path, *args):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run([sys.executable, "-m", "sdflow.cli", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def test_one_image_lands_in_the_hydra_run_folder(tmp_path):
    run = sdflow(tmp_path, "workflow=text2img", "prompt=a lighthouse, at dusk", "seed=7", "steps=3")  # a comma is text
    assert run.returncode == 0, run.stderr
    images = list((tmp_path / "outputs").rglob("*.png"))
    assert [p.name for p in images] == ["text2img_000_seed7.png"]


def test_multirun_sweep_of_four_jobs_loads_each_weight_once(tmp_path):
    run = sdflow(tmp_path, "-m", "workflow=text2img", "seed=0,1", "guidance=5,7.5", "steps=2")
    assert run.returncode == 0, run.stderr
    images = sorted((tmp_path / "multirun").rglob("*.png"))
    grids = [p for p in images if p.name == "grid.png"]
    jobs = [p for p in images if p.name != "grid.png"]
    assert len(grids) == 1 and {p.parent for p in jobs} == {grids[0].parent / n for n in "0123"}
    assert len(jobs) == 4  # plus the sweep's grid.png beside the job folders
    stats = re.findall(r"component cache: (\d+) loads, (\d+) hits", run.stdout + run.stderr)
    assert [tuple(map(int, s)) for s in stats] == [(5, 0), (5, 5), (5, 10), (5, 15)]


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
