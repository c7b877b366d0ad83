"""What a node's outputs depend on outside its plan: the files and models its parameters name.

The output cache keys a node by its type, parameters and inputs; a parameter that names a file (``input_file``)
or a model (``model_source``) says where, not what is there. Each such file is stamped here by its size and
modification time (a model: every weight file of the folder or the checkpoint it resolves to), so a changed
file, or the same name pointing elsewhere, changes the key, and nothing stale is handed on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..engine.validate import PlannedNode

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".json", ".txt")


def _stamp(path: Path) -> tuple:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _file_paths(value: Any) -> list[str]:
    """The paths a file parameter names: a path, or each entry (a path, or a mapping with a ``path``) of a list."""
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [p for item in value for p in _file_paths(item.get("path") if isinstance(item, dict) else item)]
    return []


def model_stamps(source: str, config: str | None, trusted: bool) -> list[tuple]:
    """Stamps of the files a model source resolves to (a folder's weights and configs, or one checkpoint)."""
    from ..models.sources import resolve_source

    local = Path(os.path.expanduser(source))
    if not local.exists():
        local = resolve_source(source, config or None, trusted).folder
        if local is None:
            raise FileNotFoundError(source)
    if local.is_file():
        return [_stamp(local)]
    return sorted(_stamp(p) for p in local.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def stamps(planned: PlannedNode) -> list | None:
    """The stamps of every file and model ``planned`` names (None: it names none); raises OSError when one is gone."""
    spec, params = planned.spec, planned.params
    found = [_stamp(Path(os.path.expanduser(p))) for name in spec.params_with_role("input_file")
             for p in _file_paths(params.get(name))]
    config = next((params.get(name) for name in spec.params_with_role("model_config")), None)
    trusted = any(params.get(name) for name in spec.params_with_role("trust"))
    for name in spec.params_with_role("model_source"):
        if params.get(name):
            found += model_stamps(params[name], config, trusted)
    return found or None
