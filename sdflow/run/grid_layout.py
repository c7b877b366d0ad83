"""A sweep's images as X/Y(/Z) grids laid out by its swept keys, read from what the sweep left on disk.

Every door makes its grids here: the ``-m`` command (fused, basic, Ray or Slurm launcher: Hydra's end-of-sweep
callback), ``sdflow-info grid FOLDER`` on any past sweep, and the web UI's past runs. A sweep folder holds one
folder per job with ``.hydra/overrides.yaml`` (the job's overrides) and ``manifest.json`` (its images, how it
ended), so a grid needs nothing the run kept in memory.

Swept keys are those whose values differ between jobs. The last one runs across (columns), the one before down
(rows); any others give one sheet each per value (``grid_KEY=VALUE.png``). Headers are drawn once per column
and row; long text values get short labels (P1, P2, ...) explained in a legend under the sheet. A job's images
sit side by side in its cell; a job that made none is drawn as "failed", a combination no job ran as "missing".
Sheets carry their own PNG text chunk ``sdflow_grid`` (the sweep, its axes, which jobs are where) and are
written through the one writer, so an existing file is never replaced (a second grid.png is grid_1.png).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

GRID_CHUNK = "sdflow_grid"  # the PNG text chunk that marks a grid and says what it shows
LONG_VALUE = 16  # values longer than this (characters) get a short label and a line in the legend
UNSET = "(unset)"  # the value of a key a job did not set (``+key=...`` on some jobs only)
JOB_KEY = "job"  # the axis of a sweep whose jobs all have the same overrides


@dataclass
class SweepJob:
    """One job's folder of a sweep: its number, overrides (key -> value as typed), images, and whether it failed."""

    num: int
    folder: Path
    overrides: dict[str, str]
    images: list[Path]
    failed: bool

    def value(self, key: str) -> str:
        return str(self.num) if key == JOB_KEY and key not in self.overrides else self.overrides.get(key, UNSET)


def parse_override(text: str) -> tuple[str, str]:
    """``prompt="a red circle"`` -> (prompt, a red circle): the key without +/~, the value without quotes/escapes."""
    key, _, value = str(text).partition("=")
    value = value.replace("\\", "")  # Hydra's escapes (``a\, b``)
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return key.lstrip("+~"), value


def _job_images(folder: Path) -> tuple[list[Path], bool]:
    """(the job's images, whether it failed): its manifest's list, else the PNGs in its folder (no previews)."""
    manifest = folder / "manifest.json"
    if manifest.exists():
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except ValueError:
            data = {}
        images = [folder / entry["file"] for entry in data.get("images", []) if (folder / entry["file"]).exists()]
        return images, data.get("status") in ("failed", "interrupted") or not images
    images = sorted(p for p in folder.rglob("*.png")
                    if not any(part == "previews" or part.startswith(".") for part in p.relative_to(folder).parts))
    return images, not images


def read_sweep(folder: str | Path) -> list[SweepJob]:
    """The jobs of the sweep in ``folder``, in job order; [] when it is not a sweep folder (no job ``.hydra/``)."""
    import yaml

    folder = Path(folder)
    jobs = []
    for overrides_file in folder.glob("*/.hydra/overrides.yaml"):
        job_folder = overrides_file.parent.parent
        overrides = dict(parse_override(o) for o in (yaml.safe_load(overrides_file.read_text(encoding="utf-8")) or []))
        images, failed = _job_images(job_folder)
        num = int(job_folder.name) if job_folder.name.isdigit() else -1
        jobs.append(SweepJob(num, job_folder, overrides, images, failed))
    jobs.sort(key=lambda job: (job.num, job.folder.name))
    return jobs


def swept_keys(jobs: list[SweepJob]) -> list[str]:
    """The keys whose values differ between jobs, in the order the jobs name them."""
    keys = list(dict.fromkeys(key for job in jobs for key in job.overrides))
    return [key for key in keys if len({job.value(key) for job in jobs}) > 1]


@dataclass
class Axis:
    """A swept key and its values in sweep order, each with the label its header shows."""

    key: str
    values: list[str]
    labels: list[str]

    @classmethod
    def of(cls, key: str, jobs: list[SweepJob]) -> Axis:
        values = list(dict.fromkeys(job.value(key) for job in jobs))
        if any(len(v) > LONG_VALUE for v in values):
            letter = next((c for c in key.upper() if c.isalpha()), "V")
            return cls(key, values, [f"{letter}{i}" for i in range(1, len(values) + 1)])
        return cls(key, values, list(values))

    @property
    def legend(self) -> dict[str, str]:
        """Short label -> full value, for an axis whose values were too long for a header."""
        return {label: value for label, value in zip(self.labels, self.values) if label != value}

    def header(self, index: int) -> str:
        return f"{self.key}={self.labels[index]}"


class AxisError(ValueError):
    """An axis named that the sweep did not sweep."""


@dataclass
class Sheet:
    """One grid: the jobs with one value of each sheet key, placed at (column, row) by the x and y axes."""

    name: str  # its file name: grid.png, or grid_KEY=VALUE.png
    fixed: list[tuple[Axis, int]]  # the sheet keys' axes and the index of this sheet's value on each
    x: Axis
    y: Axis | None
    cells: dict[tuple[int, int], list[SweepJob]] = field(default_factory=dict)


def _file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).replace("=_", "=").strip("_")[:60] or "_"


def grid_setting(value) -> dict[str, str | None] | None:
    """The config's ``grid`` as the axes asked for ({"x": KEY or None, ...}); None when ``grid=false``."""
    if value is None or value is False:
        return None
    get = value.get if hasattr(value, "get") else (lambda key, default=None: default)
    return {axis: (None if get(axis) in (None, "") else str(get(axis))) for axis in ("x", "y", "z")}


def choose_axes(keys: list[str], x: str | None = None, y: str | None = None,
                z: str | None = None) -> tuple[str | None, str | None, list[str]]:
    """(x, y, sheet keys) for a sweep whose swept keys are ``keys``: those asked for, the last swept ones for the
    rest; every swept key left over splits the sheets too. AxisError for an asked key that was not swept."""
    for name, key in (("x", x), ("y", y), ("z", z)):
        if key is not None and key not in keys:
            raise AxisError(f"{name}={key} is not a swept key of this sweep (swept: {', '.join(keys) or 'none'})")
    asked = [k for k in (x, y, z) if k is not None]
    if len(set(asked)) < len(asked):
        raise AxisError(f"x, y and z name one key twice ({', '.join(asked)})")
    rest = [k for k in keys if k not in asked]
    x = x if x is not None else (rest.pop() if rest else None)
    y = y if y is not None else (rest.pop() if rest else None)
    return x, y, ([z] if z is not None else []) + rest


def lay_out(jobs: list[SweepJob], x: str | None = None, y: str | None = None, z: str | None = None) -> list[Sheet]:
    """The sheets of a sweep's grid: see the module's docstring. A sweep that swept nothing: its jobs in a row."""
    keys = swept_keys(jobs)
    x_key, y_key, sheet_keys = choose_axes(keys, x, y, z)
    x_axis = Axis.of(x_key or JOB_KEY, jobs)
    y_axis = Axis.of(y_key, jobs) if y_key else None
    sheet_axes = [Axis.of(key, jobs) for key in sheet_keys]
    sheets: dict[tuple[int, ...], Sheet] = {}
    for job in jobs:
        where = tuple(axis.values.index(job.value(axis.key)) for axis in sheet_axes)
        if where not in sheets:
            name = "grid" + "".join(f"_{_file_part(axis.header(i))}" for axis, i in zip(sheet_axes, where)) + ".png"
            sheets[where] = Sheet(name, list(zip(sheet_axes, where)), x_axis, y_axis)
        column = x_axis.values.index(job.value(x_axis.key))
        row = y_axis.values.index(job.value(y_axis.key)) if y_axis else 0
        sheets[where].cells.setdefault((column, row), []).append(job)
    return list(sheets.values())


# --- drawing ------------------------------------------------------------------------------------------------------

PAD = 6
FONT_SIZE = 14
HEADER_LIMIT = 260  # the widest a row header may get (px)


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=FONT_SIZE)  # a scalable font where FreeType is there
    except (TypeError, OSError):
        return ImageFont.load_default()


def _fit(font, text: str, width: int) -> str:
    """``text`` cut (with an ellipsis) to ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _wrap(font, text: str, width: int) -> list[str]:
    """``text`` as lines no wider than ``width`` pixels, broken between words (a word too long is cut)."""
    lines, line = [], ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    lines.append(line)
    return [_fit(font, line, width) for line in lines]


def tile_size(jobs: list[SweepJob], cell: int) -> tuple[int, int]:
    """Each image's size in the grid: the first image's, shrunk to ``cell`` px on its long side (small ones are
    shown at 128 px at least, room for a header)."""
    from PIL import Image

    first = next((path for job in jobs for path in job.images), None)
    if first is None:
        return cell, cell
    with Image.open(first) as image:
        width, height = image.size
    longest = min(cell, max(128, width, height))
    scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _placeholder(draw, font, box: tuple[int, int, int, int], text: str, colour: str) -> None:
    draw.rectangle(box, fill=(236, 236, 236), outline=(200, 200, 200))
    width = font.getlength(text)
    draw.text(((box[0] + box[2] - width) / 2, (box[1] + box[3]) / 2 - FONT_SIZE / 2), text, fill=colour, font=font)


def draw_sheet(sheet: Sheet, sweep: Path, tile: tuple[int, int], per_cell: int):
    """The sheet as an RGB PIL image, and its ``sdflow_grid`` record."""
    from PIL import Image, ImageDraw

    font = _font()
    line = FONT_SIZE + 6
    tile_w, tile_h = tile
    cell_w, cell_h = per_cell * tile_w + (per_cell - 1) * 2, tile_h
    columns, rows = len(sheet.x.values), len(sheet.y.values) if sheet.y else 1
    row_header = 0
    if sheet.y is not None:
        row_header = min(HEADER_LIMIT, max(int(font.getlength(sheet.y.header(i))) for i in range(rows)) + 2 * PAD)
    width = row_header + columns * (cell_w + PAD) + PAD
    title = f"{sheet.x.key} across" + (f", {sheet.y.key} down" if sheet.y else "")
    title += "".join(f"; {axis.header(i)}" for axis, i in sheet.fixed)
    axes = [sheet.x] + ([sheet.y] if sheet.y else []) + [axis for axis, _ in sheet.fixed]
    legend = [text for axis in axes for label, value in axis.legend.items()
              for text in _wrap(font, f"{label}: {axis.key}={value}", width - 2 * PAD)]
    title_lines = _wrap(font, title, width - 2 * PAD)
    top = PAD + len(title_lines) * line + line  # the title, then the column headers
    height = top + rows * (cell_h + PAD) + (PAD + len(legend) * line if legend else 0) + PAD

    sheet_image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet_image)
    for i, text in enumerate(title_lines):
        draw.text((PAD, PAD + i * line), text, fill=(60, 60, 60), font=font)
    for column in range(columns):
        left = row_header + PAD + column * (cell_w + PAD)
        text = _fit(font, sheet.x.header(column), cell_w)
        draw.text((left + (cell_w - font.getlength(text)) / 2, top - line), text, fill="black", font=font)
    for row in range(rows if sheet.y else 0):
        text = _fit(font, sheet.y.header(row), row_header - 2 * PAD)
        draw.text((PAD, top + row * (cell_h + PAD) + (cell_h - FONT_SIZE) / 2), text, fill="black", font=font)
    cells = []
    for row in range(rows):
        for column in range(columns):
            left, upper = row_header + PAD + column * (cell_w + PAD), top + row * (cell_h + PAD)
            jobs = sheet.cells.get((column, row), [])
            images = [path for job in jobs for path in job.images]
            cells.append({"x": column, "y": row, "box": [left, upper, left + cell_w, upper + cell_h],
                          "jobs": [job.num for job in jobs],
                          "images": [path.relative_to(sweep).as_posix() for path in images]})
            if not images:
                text, colour = ("failed", (170, 0, 0)) if jobs else ("missing", (120, 120, 120))
                _placeholder(draw, font, (left, upper, left + cell_w - 1, upper + cell_h - 1), text, colour)
                continue
            for i, path in enumerate(images[:per_cell]):
                with Image.open(path) as image:
                    scale = min(tile_w / image.width, tile_h / image.height)  # fit the tile, aspect kept
                    image = image.convert("RGB").resize((max(1, round(image.width * scale)),
                                                         max(1, round(image.height * scale))), Image.LANCZOS)
                    sheet_image.paste(image, (left + i * (tile_w + 2) + (tile_w - image.width) // 2,
                                              upper + (tile_h - image.height) // 2))
            if any(job.failed for job in jobs):
                draw.rectangle((left, upper, left + cell_w - 1, upper + cell_h - 1), outline=(170, 0, 0), width=2)
    legend_top = top + rows * (cell_h + PAD) + PAD
    for i, text in enumerate(legend):
        draw.text((PAD, legend_top + i * line), text, fill=(60, 60, 60), font=font)

    def axis_record(axis: Axis | None):
        return None if axis is None else {"key": axis.key, "values": axis.values, "labels": axis.labels}

    record = {"sweep": str(sweep), "x": axis_record(sheet.x), "y": axis_record(sheet.y),
              "sheet": {axis.key: axis.values[i] for axis, i in sheet.fixed}, "cells": cells}
    return sheet_image, record


def png_bytes(image, record: dict) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(GRID_CHUNK, json.dumps(record, ensure_ascii=False))
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info, compress_level=1)  # a contact sheet: fast to write matters more
    return out.getvalue()


def write_sweep_grids(folder: str | Path, x: str | None = None, y: str | None = None, z: str | None = None,
                      cell: int = 256, jobs: list[SweepJob] | None = None) -> list[Path]:
    """Write the grids of the sweep in ``folder`` into it (new files only); their paths. [] when no job made an
    image. AxisError for an axis the sweep did not sweep."""
    from .outputs import StaticFile, write_new_file

    folder = Path(folder)
    jobs = read_sweep(folder) if jobs is None else jobs
    if not any(job.images for job in jobs):
        return []
    sheets = lay_out(jobs, x, y, z)
    tile = tile_size(jobs, cell)
    per_cell = max(sum(len(job.images) for job in cell_jobs) for sheet in sheets for cell_jobs in sheet.cells.values())
    written = []
    for sheet in sheets:
        image, record = draw_sheet(sheet, folder, tile, per_cell)
        path, _ = write_new_file(folder, sheet.name, StaticFile(png_bytes(image, record)))
        written.append(path)
    return written


def grid_record(png: str | Path) -> dict | None:
    """The ``sdflow_grid`` record of a PNG; None for a PNG that is not a sweep's grid."""
    from PIL import Image

    with Image.open(png) as image:
        text = (getattr(image, "text", None) or image.info).get(GRID_CHUNK)
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None
