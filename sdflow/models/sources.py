"""Where a model comes from: a built-in name, a local diffusers folder, or a Hugging Face hub id.

Resolving a source reads only small JSON files (model_index.json and the components' config.json),
so validation can check a workflow's model wiring before any weight loads; ``weights_problem`` reads
only the headers of the weight files, to catch a missing, truncated or pickle-only component there too.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
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
            from .single_file import resolve_single_file

            return resolve_single_file(spec, path.resolve(), config, allow_pickle)
        if not (path / "model_index.json").exists():
            raise SourceError(f"folder '{spec}' has no model_index.json, so it is not a diffusers model folder")
        return ModelSource(spec, path.resolve())

    cached = _hub_cache_folder(spec)
    if cached is None and hub_offline():
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


# Bytes per element of the safetensors dtypes.
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
WEIGHT_STEMS = ("diffusion_pytorch_model", "model")  # what diffusers and transformers load from a component folder
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file, or None; reads only its header.

    A safetensors file is an 8-byte little-endian header length, a JSON header giving each tensor's dtype,
    shape and byte range, then exactly the bytes those ranges cover.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 2 or length > size - 8 or length > 100 * 2**20:  # the safetensors library's own header limit
            return f"is truncated or corrupt (its header length {length} does not fit its {size} bytes)"
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            return "is corrupt (its header is not valid JSON)"
    end = 0
    try:
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, stop = entry["data_offsets"]
            if entry["dtype"] in _DTYPE_BYTES and stop - begin != math.prod(entry["shape"]) * _DTYPE_BYTES[entry["dtype"]]:
                return f"is corrupt (tensor '{name}' has {stop - begin} bytes for its shape {entry['shape']})"
            end = max(end, stop)
    except (AttributeError, KeyError, TypeError, ValueError):
        return "is corrupt (its header does not describe tensors)"
    held = size - 8 - length
    if held != end:
        return f"is truncated or corrupt (its header describes {end} bytes of tensors, the file holds {held})"
    return None


def weights_problem(folder: Path, allow_pickle: bool) -> str | None:
    """Why the weights in a component ``folder`` cannot be loaded, or None: missing, truncated, or only pickles.

    The answer names the file relative to the model folder, e.g. "'unet/diffusion_pytorch_model.safetensors'
    is truncated or corrupt (...)".
    """
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    where = folder.name
    for stem in WEIGHT_STEMS:
        index_name = f"{stem}.safetensors.index.json"
        if index_name in names:  # sharded: every shard the index lists must be whole
            index = _read_json(folder / index_name) or {}
            shards = sorted(set((index.get("weight_map") or {}).values()))
            if not shards:
                return f"'{where}/{index_name}' lists no weight files"
            for shard in shards:
                if not (folder / shard).is_file():
                    return f"'{where}/{shard}' (listed in {index_name}) is missing"
                problem = safetensors_problem(folder / shard)
                if problem:
                    return f"'{where}/{shard}' {problem}"
            return None
        if f"{stem}.safetensors" in names:
            problem = safetensors_problem(folder / f"{stem}.safetensors")
            return f"'{where}/{stem}.safetensors' {problem}" if problem else None
    pickles = sorted(n for n in names if Path(n).suffix in PICKLE_SUFFIXES)
    if pickles:
        return None if allow_pickle else (
            f"'{where}' has only pickle weights ({', '.join(pickles)}), which sdflow refuses by default because "
            "loading them can run code: convert them to safetensors, or pass allow_pickle=true if you trust the source")
    others = sorted(n for n in names if n.endswith(".safetensors"))
    return (f"'{where}' has no weights file ({' or '.join(s + '.safetensors' for s in WEIGHT_STEMS)})"
            + (f"; it has only {', '.join(others)} (sdflow loads the plain file, not variants)" if others else ""))
