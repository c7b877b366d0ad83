"""Where a model comes from: a built-in name, a local diffusers folder, or a Hugging Face hub id.

Resolving a source reads only small JSON files (model_index.json and the components' config.json),
so validation can check a workflow's model wiring before any weight loads.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

PACKAGED = Path(__file__).parent  # trained models that ship inside the package (e.g. shapes/)
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SourceError(ValueError):
    """A source that cannot be used; the message says why and what to do."""


@dataclass
class ModelSource:
    """A resolved model source: what the user wrote and where its files are (None: not yet downloaded)."""

    spec: str
    folder: Path | None
    hub_id: str | None = None

    @property
    def location(self) -> str:
        """What the diffusers/transformers loaders are given."""
        return self.hub_id if self.hub_id is not None else str(self.folder)

    def model_index(self) -> dict | None:
        return _read_json(self.folder / "model_index.json") if self.folder else None

    def component_config(self, component: str) -> dict | None:
        if self.folder is None:
            return None
        for name in ("config.json", "scheduler_config.json", "preprocessor_config.json"):
            data = _read_json(self.folder / component / name)
            if data is not None:
                return data
        return None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def builtin_names() -> list[str]:
    from .tiny import BUILDERS

    packaged = [p.name for p in PACKAGED.iterdir() if (p / "model_index.json").exists()]
    return sorted(set(BUILDERS) | set(packaged))


def resolve_source(spec: str) -> ModelSource:
    """Resolve ``builtin:NAME``, a local folder, or a hub id (from the local cache when already there)."""
    if not isinstance(spec, str) or not spec.strip():
        raise SourceError("expected a model source: builtin:NAME, a local diffusers folder or a hub id")
    spec = spec.strip()
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if (PACKAGED / name / "model_index.json").exists():
            return ModelSource(spec, PACKAGED / name)
        from .tiny import BUILDERS, builtin_model

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
            raise SourceError(f"'{spec}' is a file; sdflow loads diffusers model folders (with model_index.json)")
        if not (path / "model_index.json").exists():
            raise SourceError(f"folder '{spec}' has no model_index.json, so it is not a diffusers model folder")
        return ModelSource(spec, path.resolve())

    cached = _hub_cache_folder(spec)
    if cached is None and os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise SourceError(f"hub model '{spec}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                          "download it on a machine with network, or point model.path at a local folder")
    return ModelSource(spec, cached, hub_id=spec)


def _hub_cache_folder(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "model_index.json")
    except Exception:  # a malformed id or cache: treat as not cached; loading will say why
        return None
    return Path(found).parent if isinstance(found, str) else None
