"""``sdflow-info``: the node reference, a workflow drawn as a graph, and image grids of sweeps."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .run import compose_config, plan
from .workflows import available_workflows
from .engine import REGISTRY, WorkflowError
from .engine.declare import REQUIRED
from .engine.draw import to_mermaid


def _param_text(param) -> str:
    tp = getattr(param.type, "__name__", str(param.type))
    bits = [tp]
    if param.choices:
        bits.append("one of " + ", ".join(map(str, param.choices[:12])) + (" ..." if len(param.choices) > 12 else ""))
    if param.min is not None or param.max is not None:
        bits.append(f"range [{'' if param.min is None else param.min}, {'' if param.max is None else param.max}]")
    bits.append("required" if param.default is REQUIRED else f"default {param.default!r}")
    if param.per_image:
        bits.append("per image: one value, or a list with one per image")
    return "; ".join(bits)


def node_reference() -> str:
    """Markdown reference of every node type, generated from the declarations."""
    import sdflow.nodes  # noqa: F401  (registers the node types)

    out = ["# Node reference", "", "Generated from the node declarations by `sdflow-info nodes`; do not edit by hand.", ""]
    for name in sorted(REGISTRY):
        spec = REGISTRY[name]
        out += [f"## `{name}`", "", spec.description, ""]
        if spec.inputs:
            out.append("Inputs: " + ", ".join(
                f"`{k}` ({v.type}{', optional' if v.optional else ''})" for k, v in spec.inputs.items()) + "  ")
        if spec.outputs:
            out.append("Outputs: " + ", ".join(f"`{k}` ({v})" for k, v in spec.outputs.items()) + "  ")
        if spec.params:
            out += ["", "| parameter | type, range, default | meaning |", "|---|---|---|"]
            out += [f"| `{k}` | {_param_text(p)} | {p.doc} |" for k, p in spec.params.items()]
        out.append("")
    return "\n".join(out)


def image_grid(folder: Path, columns: int | None = None, cell: int = 256) -> Path:
    """Tile every PNG under a folder that is not a sweep into grid.png (a new file), labelled with each job's overrides
    where it has them; a sweep folder gets its grids by axis instead (``sweep_grids``)."""
    from PIL import Image, ImageDraw

    from .run.grid_layout import grid_record, png_bytes
    from .run.outputs import StaticFile, write_new_file

    images = sorted(p for p in folder.rglob("*.png")
                    if "previews" not in p.relative_to(folder).parts[:-1] and grid_record(p) is None)
    if not images:
        raise SystemExit(f"no PNG images under {folder}")

    def job_overrides(path: Path) -> list[str]:
        overrides = path.parent / ".hydra" / "overrides.yaml"
        if not overrides.exists():
            return [path.stem]
        import yaml

        return [str(o).replace("\\", "") for o in (yaml.safe_load(overrides.read_text()) or [])]

    # Label each cell with what its job changed: the overrides that differ between jobs.
    overrides = {path: job_overrides(path) for path in images}
    shared = set.intersection(*(set(o) for o in overrides.values())) if len(images) > 1 else set()

    def job_label(path: Path) -> str:
        # Short overrides first (seed=3 before a long prompt), so the cut at the cell's width keeps them.
        return " ".join(sorted((o for o in overrides[path] if o not in shared), key=len)) or path.stem

    def job_number(path: Path):
        return (int(path.parent.name) if path.parent.name.isdigit() else 0, str(path))

    images.sort(key=job_number)
    with Image.open(images[0]) as first:
        # Small images are not blown up past 128 px (room for a label); large ones are shrunk to ``cell``.
        cell = min(cell, max(128, *first.size))
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    label_height = 14
    grid = Image.new("RGB", (columns * cell, rows * (cell + label_height)), "white")
    draw = ImageDraw.Draw(grid)
    for i, path in enumerate(images):
        x, y = (i % columns) * cell, (i // columns) * (cell + label_height)
        with Image.open(path) as img:
            grid.paste(img.convert("RGB").resize((cell, cell)), (x, y + label_height))
        draw.text((x + 2, y + 1), job_label(path)[:48], fill="black")
    record = {"folder": str(folder), "images": [p.relative_to(folder).as_posix() for p in images], "columns": columns}
    path, _ = write_new_file(folder, "grid.png", StaticFile(png_bytes(grid, record)))
    return path


def sweep_grids(folder: Path, x: str | None = None, y: str | None = None, z: str | None = None,
                columns: int | None = None, cell: int = 256) -> list[Path]:
    """The grids of a past sweep by its swept keys (sdflow.run.grid_layout), or a folder of images tiled."""
    from .run.grid_layout import AxisError, read_sweep, write_sweep_grids

    jobs = read_sweep(folder)
    if not jobs:
        if x or y or z:
            raise SystemExit(f"{folder} is not a sweep folder (no N/.hydra/overrides.yaml): --x/--y/--z need one")
        return [image_grid(folder, columns, cell)]
    try:
        written = write_sweep_grids(folder, x, y, z, cell=cell, jobs=jobs)
    except AxisError as exc:
        raise SystemExit(f"sdflow-info grid: {exc}") from None
    if not written:
        raise SystemExit(f"no job of the sweep in {folder} wrote an image")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sdflow-info", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("nodes", help="print the node reference (markdown)")
    sub.add_parser("workflows", help="list the built-in workflows")
    graph = sub.add_parser("graph", help="print a workflow as a Mermaid flowchart")
    graph.add_argument("workflow", help="workflow name or path")
    graph.add_argument("overrides", nargs="*", help="config overrides, e.g. model=tiny")
    grid = sub.add_parser("grid", help="a sweep's grids by its swept keys (any other folder of images: tiled)")
    grid.add_argument("folder", type=Path)
    grid.add_argument("--x", help="the swept key across (default: the last swept key)")
    grid.add_argument("--y", help="the swept key down (default: the one before)")
    grid.add_argument("--z", help="the swept key with a sheet per value (default: any swept key left)")
    grid.add_argument("--columns", type=int, help="a folder that is not a sweep: images per row")
    grid.add_argument("--cell", type=int, default=256, help="the largest side of an image in the grid (px)")
    args = parser.parse_args(argv)

    if args.command == "nodes":
        print(node_reference())
    elif args.command == "workflows":
        print("\n".join(available_workflows()))
    elif args.command == "graph":
        try:
            planned = plan(None, compose_config([f"workflow={args.workflow}"] + args.overrides))
        except WorkflowError as exc:
            print(f"sdflow-info: {exc}", file=sys.stderr)
            sys.exit(2)
        print(to_mermaid(planned), end="")
    elif args.command == "grid":
        for path in sweep_grids(args.folder, args.x, args.y, args.z, args.columns, args.cell):
            print(path)


if __name__ == "__main__":
    main()
