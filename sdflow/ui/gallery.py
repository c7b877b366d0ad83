"""Past runs: the PNGs in the output folders, what each records about itself, and making one again.

Every PNG sdflow writes carries ``sdflow`` (JSON: seeds, prompts, models, versions) and ``sdflow_workflow``
(the workflow as it ran, every ``${...}`` replaced by its value) text chunks; that YAML is a runnable
workflow file, so ``reproduce`` only has to save it and run it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..api import RunResult, run_workflow


@dataclass
class PastImage:
    """A PNG sdflow wrote, found under one of the gallery folders."""

    path: Path
    modified: float
    metadata: dict
    workflow_yaml: str


def read_metadata(png: str | Path) -> tuple[dict, str]:
    """(the ``sdflow`` record, the ``sdflow_workflow`` YAML) of a PNG; ({}, "") for a PNG sdflow did not write."""
    with Image.open(png) as image:
        chunks = getattr(image, "text", None) or image.info
        record, workflow = chunks.get("sdflow"), chunks.get("sdflow_workflow", "")
    try:
        return (json.loads(record) if record else {}), str(workflow or "")
    except ValueError:
        return {}, ""


def past_images(folders: list[Path] | tuple[Path, ...], limit: int = 200) -> list[PastImage]:
    """The newest ``limit`` PNGs with sdflow metadata under ``folders`` (previews and hidden folders left out)."""
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
        if workflow:
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


def reproduce(png_path: str | Path, output_dir: str | Path) -> RunResult:
    """Make a PNG's image(s) again into ``output_dir``: its ``sdflow_workflow`` saved as workflow.yaml and run."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    workflow_file = output_dir / "workflow.yaml"
    workflow_file.write_text(png_workflow(png_path), encoding="utf-8")
    return run_workflow(str(workflow_file.resolve()), [], output_dir=output_dir)
