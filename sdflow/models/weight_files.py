"""Weight files read by their headers alone: a truncated or corrupt safetensors file, a component with only pickles.

Validation asks these before any weight loads, so a broken download is named with its file, not found half-way
through a run.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

from .model_source import read_json


# Bytes per element of the safetensors dtypes.
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
WEIGHT_STEMS = ("diffusion_pytorch_model", "model")  # what diffusers and transformers load from a component folder
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file, or None; reads only its header, once per version of the file
    (its size and modification time): a sweep validates every job, a real model's headers list a thousand tensors.

    A safetensors file is an 8-byte little-endian header length, a JSON header giving each tensor's dtype,
    shape and byte range, then exactly the bytes those ranges cover.
    """
    stat = path.stat()
    return _header_problem(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _header_problem(name: str, size: int, mtime_ns: int) -> str | None:
    path = Path(name)
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
            index = read_json(folder / index_name) or {}
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


def tensor_elements(path: Path, prefix: str = "") -> int:
    """How many numbers the tensors of a safetensors file hold (those whose names start with ``prefix``), from its
    header alone; 0 where it is not a readable safetensors file."""
    stat = path.stat()
    return _elements(str(path), stat.st_size, stat.st_mtime_ns, prefix)


@functools.lru_cache(maxsize=256)
def _elements(name: str, size: int, mtime_ns: int, prefix: str) -> int:
    if _header_problem(name, size, mtime_ns) is not None:
        return 0
    with open(name, "rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    return sum(math.prod(entry["shape"]) for key, entry in header.items()
               if key != "__metadata__" and key.startswith(prefix))


def denoiser_parameters(folder: Path | None, single_file: Path | None = None) -> int:
    """The parameters of a model's UNet (the one module a run holds on its device whole), read from headers: 0
    where they cannot be read (a hub model not downloaded yet, pickles). A folder may hold a weight file in more
    than one variant (``.fp16.``): each variant is the same parameters, so the largest count is taken."""
    if single_file is not None:
        return tensor_elements(single_file, "model.diffusion_model.") if single_file.suffix == ".safetensors" else 0
    unet = folder / "unet" if folder is not None else None
    if unet is None or not unet.is_dir():
        return 0
    variants: dict[str, int] = {}
    for path in unet.glob("*.safetensors"):
        variant = path.name.split(".")[1] if path.name.count(".") > 1 else ""  # stem[.variant].safetensors
        variants[variant] = variants.get(variant, 0) + tensor_elements(path)
    return max(variants.values(), default=0)
