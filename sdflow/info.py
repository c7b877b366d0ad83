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
    """Tile every PNG under a sweep folder into grid.png, in job order, labelled with the job's overrides."""
    from PIL import Image, ImageDraw

    images = sorted(p for p in folder.rglob("*.png") if p.name != "grid.png")
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
    target = folder / "grid.png"
    tmp = folder / ".grid.png.tmp"
    grid.save(tmp, format="PNG", compress_level=1)  # a contact sheet: fast to write matters more than its size
    tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sdflow-info", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("nodes", help="print the node reference (markdown)")
    sub.add_parser("workflows", help="list the built-in workflows")
    graph = sub.add_parser("graph", help="print a workflow as a Mermaid flowchart")
    graph.add_argument("workflow", help="workflow name or path")
    graph.add_argument("overrides", nargs="*", help="config overrides, e.g. model=tiny")
    grid = sub.add_parser("grid", help="tile a sweep's images into grid.png")
    grid.add_argument("folder", type=Path)
    grid.add_argument("--columns", type=int)
    grid.add_argument("--cell", type=int, default=256)
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
        print(image_grid(args.folder, args.columns, args.cell))


if __name__ == "__main__":
    main()
