"""Where a model comes from: a built-in name, a local diffusers folder, or a Hugging Face hub id.

Resolving a source reads only small JSON files (model_index.json and the components' config.json), so
validation can check a workflow's model wiring before any weight loads. What a resolved source is lives in
model_source.py, the header checks of weight files in weight_files.py, single-file checkpoints in single_file.py.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .model_source import ModelSource, SourceError, hub_cache_folder, hub_offline
from .single_file import resolve_single_file

PACKAGED = Path(__file__).parent  # trained models that ship inside the package (e.g. shapes/)
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def builtin_names() -> list[str]:
    from .builtin import BUILDERS

    packaged = [p.name for p in PACKAGED.iterdir() if (p / "model_index.json").exists()]
    return sorted(set(BUILDERS) | set(packaged))


def resolve_source(spec: str, config: str | None = None, allow_pickle: bool = False) -> ModelSource:
    """Resolve ``builtin:NAME``, a local folder, a single-file checkpoint, or a hub id (from the local cache when
    already there). ``config`` and ``allow_pickle`` concern single files: see single_file.resolve_single_file."""
    if not isinstance(spec, str) or not spec.strip():
        raise SourceError("expected a model source: builtin:NAME, a local diffusers folder or a hub id")
    spec = spec.strip()
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if (PACKAGED / name / "model_index.json").exists():
            return ModelSource(spec, PACKAGED / name)
        from .builtin import BUILDERS, builtin_model

        if name not in BUILDERS:
            raise SourceError(f"unknown built-in model '{name}' (built-in: {', '.join(builtin_names())})")
        return ModelSource(spec, builtin_model(name))

    path = Path(os.path.expanduser(spec))
    looks_local = spec.startswith(("/", ".", "~")) or path.exists() or not _HUB_ID.match(spec)
    if looks_local:
        if not path.exists():
            raise SourceError(f"folder '{spec}' does not exist; give a diffusers model folder (with model_index.json) "
                              "or a hub id like stable-diffusion-v1-5/stable-diffusion-v1-5")
        if path.is_file():
            return resolve_single_file(spec, path.resolve(), config, allow_pickle)
        if not (path / "model_index.json").exists():
            raise SourceError(f"folder '{spec}' has no model_index.json, so it is not a diffusers model folder")
        return ModelSource(spec, path.resolve())

    cached = hub_cache_folder(spec)
    if cached is None and hub_offline():
        raise SourceError(f"hub model '{spec}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                          "download it on a machine with network, or point model.path at a local folder")
    return ModelSource(spec, cached, hub_id=spec)
