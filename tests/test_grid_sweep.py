"""A real tiny sweep ends with its grid laid out by the swept keys, each cell its job's image; ``sdflow-info grid``
lays the same sweep out again later; an axis the sweep does not sweep is refused before anything runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from sdflow.info import main as info_main
from sdflow.run.grid_layout import grid_record


def sdflow(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "sdflow.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_sweep_ends_with_its_grid_by_axis_and_sdflow_info_lays_it_out_again(tmp_path, capsys):
    run = sdflow(tmp_path, "-m", "model=tiny", "steps=1", "seed=0,1", "guidance=1.5,3,6", "grid.x=seed",
                 "hydra.sweep.dir=out")
    assert run.returncode == 0, run.stderr
    out = tmp_path / "out"
    record = grid_record(out / "grid.png")
    assert (record["x"]["key"], record["x"]["values"]) == ("seed", ["0", "1"])
    assert (record["y"]["key"], record["y"]["values"]) == ("guidance", ["1.5", "3", "6"])
    with Image.open(out / "grid.png") as grid:
        rgb = grid.convert("RGB")
        for cell in record["cells"]:
            (job,) = cell["jobs"]
            assert job == cell["y"] + 3 * cell["x"]  # seed varies slowest in the sweep: job = guidance + 3 * seed
            (image,) = cell["images"]
            left, top, right, bottom = cell["box"]
            with Image.open(out / image) as made:
                expected = made.convert("RGB").resize((right - left, bottom - top), Image.LANCZOS)
            assert rgb.crop(cell["box"]).tobytes() == expected.tobytes(), cell
    # not a terminal: no progress bar, the sweep's figures once in its log
    assert "sweep: 6/6 jobs, 6 images" in run.stdout + run.stderr and "%|" not in run.stderr

    info_main(["grid", str(out)])  # later, with the default axes: the last swept key across
    (again,) = capsys.readouterr().out.split()
    assert Path(again) == out / "grid_1.png" and grid_record(again)["x"]["key"] == "guidance"

    refused = sdflow(tmp_path, "-m", "model=tiny", "steps=1", "seed=0,1", "grid.y=width", "hydra.sweep.dir=bad")
    assert refused.returncode == 2
    assert "grid.y=width is not a swept key of this sweep (swept: seed)" in refused.stderr
    assert not (tmp_path / "bad").exists()
