"""Hashes of weight files: what an image's metadata records so that a model can be recognised again.

``file_sha256`` hashes a file once per machine (cached by path, size and modification time in
``SDFLOW_HOME/hashes.json``, as A1111 caches its checkpoint hashes); ``weight_hashes`` gives every weight file
of a model (one file, or a diffusers folder); ``short_hash`` is A1111's "Model hash": the first 10 hex digits
of the sha256 of the whole checkpoint file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
_memory: dict[str, dict] = {}

log = logging.getLogger("sdflow.hashes")


def _cache_path() -> Path:
    from .builtin import builtin_root

    return builtin_root().parent / "hashes.json"


def _load_cache() -> dict:
    try:
        return json.loads(_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _save_cache(entries: dict) -> None:
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hashes-", suffix=".json.tmp", dir=path.parent)
    except OSError as exc:  # a read-only home: hashes are then computed again next time, nothing else changes
        log.debug("hash cache not saved: %s", exc)
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(entries, handle, indent=0, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        log.debug("hash cache not saved: %s", exc)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file (hex), computed once per (path, size, modification time)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = str(path)
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if not _memory:
        _memory.update(_load_cache())
    entry = _memory.get(key)
    if entry and entry.get("size") == stamp["size"] and entry.get("mtime_ns") == stamp["mtime_ns"]:
        return entry["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    _memory[key] = {**stamp, "sha256": digest.hexdigest()}
    _save_cache({**_load_cache(), key: _memory[key]})
    return digest.hexdigest()


def model_location(spec: str) -> Path | None:
    """Where a model source's weights are: a file or folder as it is, else the resolved source (None: not there)."""
    from .model_source import SourceError
    from .sources import resolve_source

    path = Path(os.path.expanduser(spec))
    if path.exists():
        return path.resolve()
    try:
        return resolve_source(spec).folder
    except SourceError:
        return None


def weight_files(location: str | Path) -> list[Path]:
    """The weight files of a model: the file itself, or every weight file under a folder (sorted)."""
    location = Path(location)
    if location.is_file():
        return [location]
    return sorted(p for p in location.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def weight_hashes(location: str | Path) -> dict[str, str]:
    """``{file relative to the model (its name, for one file): sha256}`` for every weight file of a model."""
    location = Path(location)
    if location.is_file():
        return {location.name: file_sha256(location)}
    return {p.relative_to(location).as_posix(): file_sha256(p) for p in weight_files(location)}


def short_hash(location: str | Path, hashes: dict[str, str] | None = None) -> str | None:
    """A1111's "Model hash" (first 10 hex digits of the checkpoint file's sha256).

    A diffusers folder has no single checkpoint file: its UNet's weights stand in (which A1111 never saw, so
    such a hash names the model for sdflow only).
    """
    location = Path(location)
    hashes = hashes if hashes is not None else weight_hashes(location)
    if location.is_file():
        return hashes[location.name][:10]
    for name in ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
                 "unet/diffusion_pytorch_model.bin"):
        if name in hashes:
            return hashes[name][:10]
    return None
