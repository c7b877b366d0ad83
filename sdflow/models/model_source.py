"""A model source once resolved (ModelSource), why one cannot be used (SourceError), and the Hugging Face hub.

A ModelSource says where a model's files are; its small JSON files (model_index.json, each component's config)
are what validation reads before any weight loads.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path


class SourceError(ValueError):
    """A source that cannot be used; the message says why and what to do."""


@dataclass
class ModelSource:
    """A resolved model source: what the user wrote and where its files are (None: not yet downloaded)."""

    spec: str
    folder: Path | None
    hub_id: str | None = None
    _local_only: bool | None = field(default=None, repr=False, compare=False)  # asked once, on the first load
    # A single-file checkpoint (``folder`` is then its folder of configs) and its family: see single_file.py.
    file: Path | None = None
    family: str | None = None

    @property
    def location(self) -> str:
        """What the diffusers/transformers loaders are given (a single file: the file, then its configs)."""
        if self.file is not None:
            return f"{self.file}::{self.folder}"
        return self.hub_id if self.hub_id is not None else str(self.folder)

    def loader_kwargs(self) -> dict:
        """Extra ``from_pretrained`` arguments: a cached hub model loads from the cache alone when the hub cannot
        be reached (else the hub client retries every file for ~25 s before it falls back to the cache)."""
        if self.hub_id is None or self.folder is None:
            return {}
        if self._local_only is None:
            self._local_only = hub_problem(self.hub_id) is not None
        return {"local_files_only": True} if self._local_only else {}

    def model_index(self) -> dict | None:
        return read_json(self.folder / "model_index.json") if self.folder else None

    def component_config(self, component: str) -> dict | None:
        if self.folder is None:
            return None
        for name in ("config.json", "scheduler_config.json", "preprocessor_config.json"):
            data = read_json(self.folder / component / name)
            if data is not None:
                return data
        return None


def read_json(path: Path) -> dict | None:
    """A small JSON file (a config), or None when it is missing or not JSON; read once per version of the file.

    The dict is shared by every caller: read it, do not change it.
    """
    try:
        stat = path.stat()
    except OSError:
        return None
    return _read_json(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _read_json(name: str, size: int, mtime_ns: int) -> dict | None:
    try:
        return json.loads(Path(name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def hub_cache_folder(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "model_index.json")
    except Exception:  # a malformed id or cache: treat as not cached; loading will say why
        return None
    return Path(found).parent if isinstance(found, str) else None


def hub_offline() -> bool:
    """Whether the user set HF_HUB_OFFLINE (the hub client then never asks the network)."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def hub_problem(repo_id: str, timeout: float = 5.0) -> str | None:
    """Why the Hugging Face hub cannot serve ``repo_id`` now (no network, no such model), or None.

    One request without retries: loading would otherwise spend ~25 s retrying before it says the same.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(repo_id, timeout=timeout)
    except GatedRepoError:
        return None  # it exists; downloading says whether the user's token may read it
    except RepositoryNotFoundError:
        return (f"hub model '{repo_id}' does not exist (or is private: log in with 'hf auth login'); check the id, "
                "or point model.path at a local folder")
    except Exception as exc:  # no network, DNS, proxy, timeout, server error: all mean it cannot be downloaded now
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (f"hub model '{repo_id}' is not in the local Hugging Face cache and the hub cannot be reached "
                f"({reason}); connect to the network, or point model.path at a local folder (HF_HUB_OFFLINE=1 "
                "skips the hub)")
    return None
