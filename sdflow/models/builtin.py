"""The built-in models sdflow builds itself (``builtin:tiny``, ``builtin:tiny-sdxl``...), once per machine.

Each is made by its builder (tiny.py and tiny_*.py, imported only when a model is built: they import torch)
into ``SDFLOW_HOME`` (default ``~/.cache/sdflow``), built aside and renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

BUILD_VERSION = 1  # bump when a builder's config changes, so cached builds are rebuilt

# name -> (builder module, builder function)
BUILDERS = {
    "tiny": ("tiny", "build_tiny_sd"), "tiny-x4": ("tiny", "build_tiny_upscaler"),
    "tiny-sd2": ("tiny_sd2", "build_tiny_sd2"), "tiny-variation": ("tiny_variation", "build_tiny_variation"),
    "tiny-sdxl": ("tiny_sdxl", "build_tiny_sdxl"), "tiny-sdxl-refiner": ("tiny_sdxl", "build_tiny_sdxl_refiner"),
    "tiny-latent-upscale": ("tiny_latent_upscale", "build_tiny_latent_upscaler"),
    "tiny-ldm3d": ("tiny_ldm3d", "build_tiny_ldm3d"), "tiny-inpaint": ("tiny_inpaint", "build_tiny_inpaint"),
    "tiny-depth": ("tiny_depth", "build_tiny_depth"),
}


def builtin_root() -> Path:
    """Where built-in models are built once per machine (``SDFLOW_HOME`` overrides)."""
    base = os.environ.get("SDFLOW_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "sdflow")
    return Path(base) / "builtin"


def builder(name: str) -> Callable[[Path], Path]:
    """The function that builds built-in model ``name`` into a folder."""
    from . import tiny, tiny_depth, tiny_inpaint, tiny_latent_upscale, tiny_ldm3d, tiny_sd2, tiny_sdxl, tiny_variation

    modules = {module.__name__.rsplit(".", 1)[1]: module for module in (
        tiny, tiny_depth, tiny_inpaint, tiny_latent_upscale, tiny_ldm3d, tiny_sd2, tiny_sdxl, tiny_variation)}
    module, function = BUILDERS[name]
    return getattr(modules[module], function)


def builtin_model(name: str) -> Path:
    """Path of built-in model ``name``, building it once (atomically: built aside, renamed into place)."""
    if name not in BUILDERS:
        raise KeyError(name)
    return build_once(builtin_root() / f"{name}-v{BUILD_VERSION}", lambda folder: builder(name)(folder))


def build_once(target: Path, build: Callable[[Path], object]) -> Path:
    """``target`` (a model folder), made by ``build(scratch)`` in a scratch folder beside it and renamed into
    place, so no process ever sees half a folder; done once, whoever of several processes finishes first."""
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(scratch)
        try:
            os.rename(scratch, target)
        except OSError:  # another process built it first
            if not (target / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
