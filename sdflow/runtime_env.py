"""The process around a run: how many CPU threads torch uses, and which third-party notices reach the user."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("sdflow")

# Below this many bytes of weights a model is small (sdflow's built-in ones hold a few MB; SD 1.5 2-4 GB):
# its ops are too short for a second thread to pay, and an OpenMP team spin-waits for cores that are busy.
# Measured on a 2-core machine, shapes model, 64 px, 20 steps, median of 5 (chain: with the 256 px x4 upscale):
#   idle cores:        text2img 0.43 s with 1 or 2 threads;  chain 1.7-1.8 s with 1 or 2 threads
#   other work beside: text2img 0.75 s / 1 thread, 5.0 s / 2;  chain 2.5 s / 1 thread, 13 s / 2
# (and a 40-job tiny sweep under load: 21 s on one thread, 108-121 s on torch's default).
SMALL_MODEL_BYTES = 200 * 2**20
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
_torch_default_threads: int | None = None  # torch's own choice, read before sdflow first changes it


def plan_weight_bytes(plan) -> int | None:
    """Bytes of the weights the plan's models are loaded from (its ``model_source`` parameters: a model folder's
    weight files, or one file). None when one of them is not on disk yet (a hub id still to download): size
    unknown, so not small.
    """
    sources = []
    for planned in plan.nodes.values():
        spec, params = planned.spec, planned.params
        config = next((params.get(name) for name in spec.params_with_role("model_config")), None)
        trusted = any(params.get(name) for name in spec.params_with_role("trust"))
        sources += [(source, config or None, trusted) for source in
                    (params.get(name) for name in spec.params_with_role("model_source")) if source]
    return _weight_bytes(tuple(sorted(sources, key=str)))


@functools.lru_cache(maxsize=64)
def _weight_bytes(sources: tuple) -> int | None:
    """Bytes of the weight files of ``sources`` ((source, config, trusted) each); asked once per process and set
    of sources (a sweep's jobs share theirs), since it walks model folders."""
    from .models.model_source import SourceError
    from .models.sources import resolve_source

    files = set()
    for source, config, trusted in sources:
        local = Path(os.path.expanduser(source))
        if not local.exists():  # a built-in name or a hub id: where it is (None: not downloaded yet)
            try:
                local = resolve_source(source, config, trusted).folder
            except SourceError:
                return None
            if local is None:
                return None
        found = [local] if local.is_file() else [p for p in local.rglob("*") if p.suffix in WEIGHT_SUFFIXES]
        files.update(p.resolve() for p in found)
    return sum(p.stat().st_size for p in files)


def choose_threads(runtime: Mapping, weight_bytes: int | None) -> int | None:
    """The intra-op thread count for a run; None leaves torch's own choice (physical cores, or OMP_NUM_THREADS).

    ``runtime.threads`` wins when set. Otherwise a small model on the CPU gets one thread; anything else,
    or a process started with OMP_NUM_THREADS (the user's own choice), keeps torch's.
    """
    threads = runtime.get("threads")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            from .engine import Problem, ValidationError

            raise ValidationError([Problem("config", None, "runtime.threads",
                                           f"expected a whole number >= 1, or null for automatic; given {threads!r}")])
        return threads
    if str(runtime.get("device", "cpu")) != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return None
    if weight_bytes is not None and weight_bytes < SMALL_MODEL_BYTES:
        return 1
    return None


def configure_threads(runtime: Mapping, weight_bytes: int | None) -> int:
    """Set torch's intra-op threads for a run (see ``choose_threads``); returns the count in force."""
    import torch

    global _torch_default_threads
    if _torch_default_threads is None:
        _torch_default_threads = torch.get_num_threads()
    wanted = choose_threads(runtime, weight_bytes) or _torch_default_threads
    if torch.get_num_threads() != wanted:  # set_num_threads rebuilds the thread pool: only on a change
        torch.set_num_threads(wanted)
        log.debug("torch threads: %d (weights: %s bytes)", wanted, weight_bytes)
    return wanted


class _DropMessages(logging.Filter):
    """Drops a logger's records whose message contains one of ``fragments``."""

    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


# transformers draws a bar for every text encoder it loads, and for each one a tiny model's first build
# saves; sdflow already logs each load (and its size) once. Download bars from the hub keep showing: those
# are the user's wait.
HIDDEN_BARS = ("Loading weights", "Writing model shards")


def _hide_weight_file_bars(factory, args, kwargs):
    if kwargs.get("desc") in HIDDEN_BARS:
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


_quiet = False


def quiet_third_party() -> None:
    """Keep notices that are not the user's problem off stderr; real warnings still show. Safe to call again."""
    global _quiet
    if _quiet:
        return
    _quiet = True
    # sdflow never installs torchvision (it is large and nothing needs it): transformers then uses its PIL
    # image processors for the CLIP safety checker, image-variation and DPT depth inputs, and says so once
    # per class, advising an install the user should not make.
    logging.getLogger("transformers.utils.import_utils").addFilter(
        _DropMessages("requires torchvision (not installed); falling back to"))
    # The ldm3d workflow is built from sdflow's own nodes, not diffusers' StableDiffusionLDM3DPipeline; only
    # the tiny_ldm3d builder constructs that pipeline, to write the model folder in its exact format.
    logging.getLogger("diffusers.pipelines.pipeline_utils").addFilter(
        _DropMessages("StableDiffusionLDM3DPipeline has been deprecated"))
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_tqdm_hook(_hide_weight_file_bars)


def settle_heap() -> None:
    """Move every object alive now into the garbage collector's permanent generation (``gc.freeze``).

    A command's objects that live as long as it does (a sweep's configs and plans; after its first job, the
    libraries and models it loaded) are then never walked again by a full collection; without it each one walks
    them all: ~0.1-0.3 s apiece while torch, diffusers and transformers load, measured here. Only for the
    ``sdflow`` command, whose process ends with its work: a frozen object is still freed when nothing refers to it,
    but not as part of a reference cycle, which a long-lived server would slowly gather.
    """
    import gc

    gc.freeze()
