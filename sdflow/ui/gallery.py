"""Past runs: the PNGs in the output folders and what each records about itself.

Every PNG sdflow writes carries ``sdflow`` (JSON: seeds, prompts, models, versions) and ``sdflow_workflow``
(the workflow as it ran, every ``${...}`` replaced by its value) text chunks; that YAML is a runnable
workflow, which the API's "run again" submits as a request (sdflow.reproduce makes an image again from Python).
A sweep's grids (sdflow.run.grid_layout) are listed with them: their ``sdflow_grid`` record says which sweep,
which axes and which job is in which cell; they carry no workflow (run again runs an image, not a grid).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..run.grid_layout import GRID_CHUNK


@dataclass
class PastImage:
    """A PNG sdflow wrote, found under one of the gallery folders: an image, or a sweep's grid (``is_grid``)."""

    path: Path
    modified: float
    metadata: dict
    workflow_yaml: str

    @property
    def is_grid(self) -> bool:
        return not self.workflow_yaml


def read_metadata(png: str | Path) -> tuple[dict, str]:
    """(the ``sdflow`` record, the ``sdflow_workflow`` YAML) of a PNG, or (a sweep grid's record, ""); ({}, "") for a
    PNG sdflow did not write."""
    with Image.open(png) as image:
        chunks = getattr(image, "text", None) or image.info
        record, workflow = chunks.get("sdflow") or chunks.get(GRID_CHUNK), chunks.get("sdflow_workflow", "")
    try:
        return (json.loads(record) if record else {}), str(workflow or "")
    except ValueError:
        return {}, ""


def past_images(folders: list[Path] | tuple[Path, ...], limit: int = 200) -> list[PastImage]:
    """The newest ``limit`` PNGs with sdflow metadata under ``folders``, sweeps' grids among them (previews and hidden
    folders left out)."""
    found = []
    for folder in map(Path, folders):
        for path in folder.rglob("*.png") if folder.is_dir() else ():
            parts = path.relative_to(folder).parts
            if "previews" not in parts[:-1] and not any(part.startswith(".") for part in parts):
                found.append((path.stat().st_mtime, path))
    images = []
    for modified, path in sorted(found, reverse=True):
        try:
            record, workflow = read_metadata(path)
        except OSError:
            continue
        if workflow or record.get("cells") is not None:  # an image sdflow made, or a sweep's grid
            images.append(PastImage(path, modified, record, workflow))
        if len(images) >= limit:
            break
    return images


def png_workflow(png: str | Path) -> str:
    """The runnable workflow YAML a PNG carries; ValueError if it carries none."""
    _, workflow = read_metadata(png)
    if not workflow:
        raise ValueError(f"{png} carries no sdflow_workflow text chunk (not written by sdflow?)")
    return workflow
