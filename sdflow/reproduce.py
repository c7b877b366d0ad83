"""reproduce: make an image again from the metadata sdflow wrote into its PNG.

The ``sdflow_workflow`` chunk is the workflow as it ran (every value filled in), so it runs as it is; the
``sdflow`` chunk says which image of the run this one was and records the sha256 of every weight file each
model loaded. Before anything loads, every model is looked up by the path (or builtin name, or hub id) it
was loaded from and its weights hashed again: a missing model or a changed weight file is named, with the
override that points the workflow elsewhere. The job runs as it ran (all the images it made together, since a
batch of one can differ from a batch of several in the last bits), so on the same device and dtype the image
comes back with the same pixels.

Overrides change the workflow before it runs: ``node.param=value`` sets one node's parameter
(``noise.seed=7``, ``model.source=/new/place/model``), ``param=value`` sets it in every node that has it
(``steps=30``, ``prompt="a red cat"``), ``runtime.KEY=value`` the runtime (``runtime.device=cuda``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .engine import SCHEMA_VERSION, InvalidWorkflow


class ReproduceError(InvalidWorkflow):
    """An image that cannot be made again as it was: no metadata, a model missing or changed, a bad override."""


@dataclass
class Reproduction:
    """What ``reproduce`` made: the run, the file that remakes the given image, and whether its pixels match."""

    result: object  # sdflow.api.RunResult
    original: Path
    remade: Path | None
    same_pixels: bool | None  # None: the overrides changed what the image is, so no comparison is meaningful
    max_difference: int | None  # largest difference of any pixel channel, in 8-bit levels
    notes: list[str] = field(default_factory=list)


def read_metadata(png_path: str | Path) -> tuple[str, dict]:
    """The ``sdflow_workflow`` YAML and the ``sdflow`` JSON record of a PNG sdflow wrote."""
    from PIL import Image, UnidentifiedImageError

    path = Path(png_path)
    try:
        with Image.open(path) as image:
            text = dict(getattr(image, "text", {}) or {})
    except (OSError, UnidentifiedImageError) as exc:
        raise ReproduceError(f"cannot read '{path}': {exc}") from None
    workflow, record = text.get("sdflow_workflow"), text.get("sdflow")
    if not workflow or not record:
        other = " (it has A1111 'parameters' only: it was not made by sdflow)" if "parameters" in text else ""
        raise ReproduceError(f"'{path}' has no sdflow metadata (the 'sdflow' and 'sdflow_workflow' text chunks){other}; "
                             "only PNGs sdflow wrote can be made again")
    try:
        return workflow, json.loads(record)
    except ValueError:
        raise ReproduceError(f"'{path}': its 'sdflow' text chunk is not valid JSON") from None


def apply_overrides(nodes: dict[str, dict], overrides: list[str]) -> tuple[list[str], bool]:
    """Set ``node.param=value`` / ``param=value`` in the resolved workflow's nodes, in place.

    Returns the runtime overrides (``runtime.KEY=value``), left for the config, and whether a value that makes
    the image changed (a model's new place is not one: its weights are checked against the recorded hashes).
    """
    runtime, changed = [], False
    for override in overrides:
        key, sep, text = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ReproduceError(f"override '{override}': expected KEY=VALUE (node.param=value or param=value)")
        if key.startswith("runtime."):
            runtime.append(f"{key}={text}")
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node_id, dot, param = key.rpartition(".")
        if dot:
            if node_id not in nodes:
                raise ReproduceError(f"override '{override}': the workflow has no node '{node_id}' "
                                     f"(nodes: {', '.join(nodes)})")
            if param not in nodes[node_id] or param == "type":
                raise ReproduceError(f"override '{override}': node '{node_id}' has no parameter '{param}' "
                                     f"(it has: {', '.join(k for k in nodes[node_id] if k != 'type')})")
            targets = [node_id]
        else:
            targets = [n for n, body in nodes.items() if param in body and param != "type"]
            if not targets:
                names = sorted({k for body in nodes.values() for k in body if k != "type"})
                raise ReproduceError(f"override '{override}': no node of the workflow has a parameter '{param}' "
                                     f"(parameters: {', '.join(names)}); write node.param to set one node's")
        for target in targets:
            changed = changed or (nodes[target][param] != value and param != "source")
            nodes[target][param] = value
    return runtime, changed


def model_problems(nodes: dict[str, dict], recorded: dict[str, dict]) -> list[str]:
    """What is missing or changed among the models the image was made with, each with the way to fix it."""
    from .models.hashes import weight_hashes
    from .models.model_source import SourceError
    from .models.sources import resolve_source

    problems = []
    for node_id, entry in recorded.items():
        body = nodes.get(node_id)
        if body is None or "source" not in body:
            continue
        source, was = body["source"], entry.get("source")
        moved = f" (it was '{was}')" if was and was != source else ""
        location = Path(str(source)).expanduser()
        if not location.exists():  # a file or folder is checked by its hashes alone; anything else resolves first
            try:
                location = resolve_source(str(source)).folder
            except SourceError as exc:
                problems.append(f"node '{node_id}': the model '{source}'{moved} is missing: {exc}; if it moved, give "
                                f"its new place with {node_id}.source=/new/place")
                continue
        expected = entry.get("sha256") or {}
        if not expected or location is None:
            continue
        found = weight_hashes(location)
        missing = sorted(set(expected) - set(found))
        changed = sorted(name for name in set(expected) & set(found) if expected[name] != found[name])
        if missing or changed:
            details = ([f"'{name}' is missing" for name in missing] +
                       [f"'{name}' changed (sha256 {expected[name][:12]}... when the image was made, now "
                        f"{found[name][:12]}...)" for name in changed])
            problems.append(f"node '{node_id}': the model '{source}' is not the one the image was made with: "
                            + "; ".join(details) + f"; point {node_id}.source at the original, or pass "
                            "check_models=False to make it with these weights anyway")
    return problems


def reproduce(png_path: str | Path, overrides: list[str] | None = None, output_dir: str | Path | None = None, *,
              check_models: bool = True, cache=None, progress: bool = False, on_write=None) -> Reproduction:
    """Make the image in ``png_path`` again from its metadata, with ``overrides`` applied; images go to
    ``output_dir`` (default: a new temporary folder), beside the workflow that ran (``NAME.workflow.yaml``).

    The workflow is planned as every run is (sdflow.run.plan: every check), straight from the PNG's text.
    """
    from PIL import Image

    from .engine import parse_workflow
    from .run import compose_config, plan, run
    from .run.outputs import StaticFile, write_new_file

    original = Path(png_path)
    workflow_yaml, record = read_metadata(original)
    if int(record.get("schema", 1)) > SCHEMA_VERSION:
        raise ReproduceError(f"'{original}' was written by a newer sdflow (metadata schema {record['schema']}; this "
                             f"one reads up to {SCHEMA_VERSION}): update sdflow to make it again")
    workflow = yaml.safe_load(workflow_yaml) or {}
    nodes = workflow.get("nodes") or {}
    runtime_overrides, changed = apply_overrides(nodes, list(overrides or []))
    notes = []
    problems = model_problems(nodes, record.get("models") or {})
    if problems and check_models:
        raise ReproduceError(f"cannot make '{original.name}' again as it was:\n" + "\n".join(f"  - {p}" for p in problems))
    notes += problems
    if record.get("batch"):
        notes.append("the image was made in a fused sweep batch with other jobs; it is made again with its own job's "
                     "images only, which can move a pixel by one level in rare cases")
    recorded_runtime = record.get("runtime") or {}
    runtime = [f"runtime.{key}={recorded_runtime[key]}" for key in ("device", "dtype") if key in recorded_runtime]
    runtime = [r for r in runtime if r.split("=")[0] not in {o.split("=")[0] for o in runtime_overrides}]

    if output_dir is None:
        import tempfile

        output_dir = tempfile.mkdtemp(prefix="sdflow-")
    text = yaml.safe_dump(workflow, sort_keys=False, allow_unicode=True)
    config = compose_config(runtime + runtime_overrides)
    planned = plan(parse_workflow(text, f"{original.name} (its sdflow_workflow)"), config)
    # the workflow that runs, beside its images (a new file, as every file sdflow writes)
    write_new_file(Path(output_dir), f"{original.stem}.workflow.yaml", StaticFile(text.encode("utf-8")))
    result = run(planned, config, output_dir, cache=cache, progress=progress, on_write=on_write)

    image = record.get("image") or {}
    remade = next((path for path in result.saved if _made_as(path, image)), None)
    same = difference = None
    if remade is not None and not changed:
        import numpy as np

        with Image.open(original) as a, Image.open(remade) as b:
            first, second = np.asarray(a).astype(np.int64), np.asarray(b).astype(np.int64)
        difference = int(np.abs(first - second).max()) if first.shape == second.shape else None
        same = difference == 0
    return Reproduction(result, original, remade, same, difference, notes)


def _made_as(path: Path, image: dict) -> bool:
    """Whether a PNG of the new run is the one the original image was: same saving node, same index."""
    try:
        _, record = read_metadata(path)
    except ReproduceError:
        return False
    made = record.get("image") or {}
    return made.get("node") == image.get("node") and made.get("index") == image.get("index")
