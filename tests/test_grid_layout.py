"""A sweep's grids laid out by its swept keys, on synthetic sweep folders (small solid images, the files a sweep
leaves: N/.hydra/overrides.yaml, N/manifest.json): axes, headers, a third axis, several images a cell, failed and
missing cells, the grid's own metadata, never replacing a file, and ``sdflow-info grid`` on a past sweep."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from sdflow.info import main as info_main
from sdflow.run.grid_layout import AxisError, grid_record, grid_setting, read_sweep, write_sweep_grids
from sdflow.ui.gallery import past_images

SIZE = 32


def colour(num: int, image: int = 0) -> tuple[int, int, int]:
    """A colour of its own for each job's each image."""
    return (40 + 13 * num) % 256, (200 - 50 * image) % 256, (90 + 37 * num) % 256


def make_sweep(folder: Path, jobs: list[list[str]], images: int = 1, failed: tuple[int, ...] = ()) -> Path:
    """A sweep folder as sdflow leaves it: one folder per job; ``failed`` jobs wrote no image."""
    for num, overrides in enumerate(jobs):
        job = folder / str(num)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        files = [] if num in failed else [f"img_{i}.png" for i in range(images)]
        for i, name in enumerate(files):
            Image.new("RGB", (SIZE, SIZE), colour(num, i)).save(job / name)
        status = "failed" if num in failed else "done"
        (job / "manifest.json").write_text(json.dumps({"status": status, "images": [{"file": f} for f in files]}))
    return folder


def sweep_jobs(**swept) -> list[list[str]]:
    """Hydra's expansion: every combination, the last key varying fastest, plus an override every job shares."""
    keys = list(swept)
    return [["steps=2"] + [f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*swept.values())]


def cell_colours(grid: Path) -> dict[tuple[int, int], list[tuple[int, int, int]]]:
    """(column, row) -> the colour at the middle of each image slot of the cell, read from the grid's pixels."""
    record = grid_record(grid)
    with Image.open(grid) as image:
        rgb = image.convert("RGB")
        found = {}
        for cell in record["cells"]:
            left, top, right, bottom = cell["box"]
            slots = max(1, len(cell["images"]))
            width = (right - left) // slots
            found[(cell["x"], cell["y"])] = [rgb.getpixel((left + i * width + width // 2, (top + bottom) // 2))
                                             for i in range(slots)]
    return found


def test_the_last_two_swept_keys_run_across_and_down_in_sweep_order(tmp_path):
    folder = make_sweep(tmp_path, sweep_jobs(seed=[0, 1, 2], guidance=[6, 1.5]))
    (grid,) = write_sweep_grids(folder)
    record = grid_record(grid)
    assert grid.name == "grid.png" and record["sweep"] == str(folder)
    assert record["x"]["key"] == "guidance" and record["x"]["values"] == ["6", "1.5"]  # as typed, not sorted
    assert record["y"]["key"] == "seed" and record["y"]["values"] == ["0", "1", "2"]
    assert "steps" not in json.dumps(record)  # the same in every job: not an axis
    colours = cell_colours(grid)
    for row, column in itertools.product(range(3), range(2)):
        assert colours[(column, row)] == [colour(row * 2 + column)]


def test_grid_x_and_grid_y_choose_the_axes(tmp_path):
    folder = make_sweep(tmp_path, sweep_jobs(seed=[0, 1, 2], guidance=[6, 1.5]))
    (grid,) = write_sweep_grids(folder, x="seed", y="guidance")
    record = grid_record(grid)
    assert (record["x"]["key"], record["y"]["key"]) == ("seed", "guidance")
    colours = cell_colours(grid)
    assert colours[(2, 1)] == [colour(5)] and colours[(1, 0)] == [colour(2)]
    with Image.open(grid) as image:
        assert image.width > image.height  # three columns of two rows now
    with pytest.raises(AxisError, match=r"x=width is not a swept key of this sweep \(swept: seed, guidance\)"):
        write_sweep_grids(folder, x="width")


def test_each_column_and_row_has_one_header_in_the_margin(tmp_path):
    folder = make_sweep(tmp_path, sweep_jobs(seed=[0, 1, 2], guidance=[6, 1.5]))
    (grid,) = write_sweep_grids(folder)
    record = grid_record(grid)
    boxes = {(c["x"], c["y"]): c["box"] for c in record["cells"]}
    with Image.open(grid) as image:
        rgb = image.convert("L")
        first_top, first_left = boxes[(0, 0)][1], boxes[(0, 0)][0]
        for column in range(2):  # text in the band above the first row, over each column
            left, _, right, _ = boxes[(column, 0)]
            band = rgb.crop((left, first_top - 20, right, first_top))
            assert band.getextrema()[0] < 100, column
        for row in range(3):  # text left of each row
            _, top, _, bottom = boxes[(0, row)]
            band = rgb.crop((0, top, first_left, bottom))
            assert band.getextrema()[0] < 100, row
        # between the rows of cells, no header is repeated: the gap under the first row is blank
        gap = rgb.crop((first_left, boxes[(0, 0)][3], boxes[(1, 0)][2], boxes[(0, 1)][1]))
        assert gap.getextrema() == (255, 255)


def test_long_text_values_get_short_labels_and_a_legend(tmp_path):
    prompts = ['"a small red circle on the left, blue background"', '"a large green square"']
    folder = make_sweep(tmp_path, sweep_jobs(prompt=prompts, seed=[0, 1]))
    (grid,) = write_sweep_grids(folder)
    record = grid_record(grid)
    assert record["y"]["key"] == "prompt" and record["y"]["labels"] == ["P1", "P2"]
    assert record["y"]["values"] == ["a small red circle on the left, blue background", "a large green square"]
    assert record["x"]["labels"] == record["x"]["values"] == ["0", "1"]  # short values are their own labels
    bottom = max(c["box"][3] for c in record["cells"])
    with Image.open(grid) as image:
        legend = image.convert("L").crop((0, bottom + 2, image.width, image.height))
        assert legend.getextrema()[0] < 100  # the legend's text under the sheet
    short = make_sweep(tmp_path / "short", sweep_jobs(prompt=["red", "blue"], seed=[0, 1]))
    (plain,) = write_sweep_grids(short)
    with Image.open(plain) as image_plain, Image.open(grid) as image_long:
        assert image_plain.height < image_long.height  # no legend where no label was needed


def test_a_third_axis_gives_one_sheet_per_value(tmp_path):
    folder = make_sweep(tmp_path, sweep_jobs(steps=[2, 4], seed=[0, 1], guidance=[1.5, 6]))
    grids = write_sweep_grids(folder)
    assert [g.name for g in grids] == ["grid_steps=2.png", "grid_steps=4.png"]
    for sheet, grid in enumerate(grids):
        record = grid_record(grid)
        assert record["sheet"] == {"steps": ["2", "4"][sheet]}
        assert (record["x"]["key"], record["y"]["key"]) == ("guidance", "seed")
        colours = cell_colours(grid)
        for row, column in itertools.product(range(2), range(2)):
            assert colours[(column, row)] == [colour(sheet * 4 + row * 2 + column)]
    named = write_sweep_grids(folder, x="steps", y="guidance", z="seed")
    assert [g.name for g in named] == ["grid_seed=0.png", "grid_seed=1.png"]
    assert grid_record(named[1])["x"]["key"] == "steps"


def test_one_swept_key_is_one_row_and_several_images_sit_side_by_side(tmp_path):
    folder = make_sweep(tmp_path, sweep_jobs(guidance=[1.5, 3, 6]), images=2)
    (grid,) = write_sweep_grids(folder)
    record = grid_record(grid)
    assert record["y"] is None and {c["y"] for c in record["cells"]} == {0}
    colours = cell_colours(grid)
    for column in range(3):
        assert colours[(column, 0)] == [colour(column, 0), colour(column, 1)]
    box = record["cells"][0]["box"]
    assert box[2] - box[0] > 2 * 128 and box[3] - box[1] == 128  # two 128 px tiles (32 px images shown larger)


def test_failed_jobs_and_combinations_no_job_ran_are_shown_as_such(tmp_path):
    jobs = sweep_jobs(seed=[0, 1], guidance=[1.5, 6])
    folder = make_sweep(tmp_path, jobs[:3], failed=(1,))  # job 1 failed; (seed=1, guidance=6) never ran
    (grid,) = write_sweep_grids(folder)
    cells = {(c["x"], c["y"]): c for c in grid_record(grid)["cells"]}
    assert cells[(1, 0)]["jobs"] == [1] and cells[(1, 0)]["images"] == []
    assert cells[(1, 1)]["jobs"] == [] and cells[(1, 1)]["images"] == []
    colours = cell_colours(grid)
    assert colours[(0, 0)] == [colour(0)] and colours[(0, 1)] == [colour(2)]
    with Image.open(grid) as image:
        rgb = image.convert("RGB")
        for key, word_colour in (((1, 0), (170, 0, 0)), ((1, 1), (120, 120, 120))):  # "failed" red, "missing" grey
            left, top, right, bottom = cells[key]["box"]
            placeholder = rgb.crop((left + 2, top + 2, right - 2, bottom - 2))
            found = {pixel for pixel in placeholder.getdata()}
            assert (236, 236, 236) in found and word_colour in found
            other = (120, 120, 120) if word_colour == (170, 0, 0) else (170, 0, 0)
            assert other not in found


def test_grids_never_replace_a_file_and_say_what_they_show(tmp_path):
    folder = make_sweep(tmp_path, sweep_jobs(seed=[0, 1], guidance=[1.5, 6]))
    (first,) = write_sweep_grids(folder)
    before = first.read_bytes()
    (second,) = write_sweep_grids(folder, x="seed")
    assert (first.name, second.name) == ("grid.png", "grid_1.png")
    assert first.read_bytes() == before
    assert grid_record(second)["x"]["key"] == "seed"
    assert [job.num for job in read_sweep(folder)] == [0, 1, 2, 3]  # grids are not jobs
    found = past_images([tmp_path])
    grids = [p for p in found if p.is_grid]
    assert sorted(p.path.name for p in grids) == ["grid.png", "grid_1.png"]
    assert grids[0].metadata["x"]["key"] in ("seed", "guidance")


def test_sdflow_info_grid_on_a_past_sweep(tmp_path, capsys):
    folder = make_sweep(tmp_path, sweep_jobs(seed=[0, 1], guidance=[1.5, 6], steps=[2, 4]))
    info_main(["grid", str(folder), "--x", "seed", "--y", "steps"])
    printed = capsys.readouterr().out.split()
    assert [Path(p).name for p in printed] == ["grid_guidance=1.5.png", "grid_guidance=6.png"]
    assert grid_record(printed[0])["x"]["key"] == "seed"
    with pytest.raises(SystemExit, match="not a swept key"):
        info_main(["grid", str(folder), "--x", "prompt"])
    plain = tmp_path / "plain"  # not a sweep: its images tiled, as before
    plain.mkdir()
    for i in range(3):
        Image.new("RGB", (SIZE, SIZE), colour(i)).save(plain / f"{i}.png")
    info_main(["grid", str(plain), "--columns", "3"])
    assert Path(capsys.readouterr().out.strip()) == plain / "grid.png"


def test_the_grid_setting(tmp_path):
    from sdflow.run import compose_config

    assert grid_setting(compose_config([]).grid) == {"x": None, "y": None, "z": None}
    assert grid_setting(compose_config(["grid.x=seed", "grid.z=prompt"]).grid) == {"x": "seed", "y": None,
                                                                                  "z": "prompt"}
    assert grid_setting(compose_config(["grid=false"]).grid) is None
    assert grid_setting(compose_config(["grid=true"]).grid) == {"x": None, "y": None, "z": None}


def test_the_end_of_sweep_callback_draws_the_grid_unless_grid_is_false(tmp_path):
    from omegaconf import OmegaConf

    from sdflow.cli import SweepGrid

    off = make_sweep(tmp_path / "off", sweep_jobs(seed=[0, 1], guidance=[1.5, 6]))
    SweepGrid().on_multirun_end(OmegaConf.create({"grid": False, "hydra": {"sweep": {"dir": str(off)}}}))
    assert not list(off.glob("grid*.png"))
    on = make_sweep(tmp_path / "on", sweep_jobs(seed=[0, 1], guidance=[1.5, 6]))
    SweepGrid().on_multirun_end(OmegaConf.create({"grid": {"x": "seed", "y": None, "z": None},
                                                  "hydra": {"sweep": {"dir": str(on)}}}))
    assert grid_record(on / "grid.png")["x"]["key"] == "seed"
