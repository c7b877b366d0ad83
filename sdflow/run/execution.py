"""Run a plan: build its context (one function, for every door), let the engine execute it, write its files.

    config = compose_config(["prompt=a red circle", "seed=3"])
    result = run(plan(None, config), config, "out")      # or run_workflow("text2img", [...], output_dir="out")
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from .. import __version__
from ..engine import (ComponentCache, Files, OutputCache, Plan, RunContext, RunRecord, execute, process_cache,
                      process_output_cache)
from ..nodes.previews import StepPreview, step_callback
from ..nodes.types import Images
from ..runtime_env import configure_threads, plan_weight_bytes
from .compose import compose_config
from .outputs import files_of
from .stamps import stamps
from .planning import plan as make_plan
from .planning import prompt_warnings, resolved_workflow_yaml

log = logging.getLogger("sdflow")


@dataclass
class RunResult:
    """What a run made: every node's outputs, its record, the files it saved, and where it ran (a sweep's worker)."""

    outputs: dict[str, dict[str, Any]]
    record: RunRecord
    saved: list[Path] = field(default_factory=list)
    plan: Plan | None = None
    worker: str = ""  # the remote worker that ran it ("": this process)

    def images(self, node: str | None = None) -> list:
        """PIL images of ``node``'s IMAGE output (default: the last node in order that produced images)."""
        from ..nodes.images import pixels_to_pil

        candidates = [node] if node else list(reversed(self.plan.order))
        for node_id in candidates:
            for value in self.outputs.get(node_id, {}).values():
                if isinstance(value, Images):
                    return pixels_to_pil(value.pixels)
        return []


@functools.cache
def versions() -> dict[str, str]:
    """The versions of sdflow and the libraries that make its images (read once per process)."""
    found = {"sdflow": __version__}
    for package in ("diffusers", "torch", "transformers"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def runtime_compile(runtime) -> bool | str:
    """``runtime.compile``: false, true, or a torch.compile mode ("reduce-overhead": CUDA graphs; "max-autotune")."""
    value = runtime.get("compile", False)
    if value in (None, False, "false", "False"):
        return False
    return True if value in (True, "true", "True", "default") else str(value)


def attention_slicing(runtime) -> str | int | None:
    """``runtime.attention_slicing``: false (off), true or "auto" (the heads in two halves), "max" (one at a time),
    or a slice size, as diffusers' enable_attention_slicing takes it."""
    value = runtime.get("attention_slicing", False)
    if value is False or value is None:
        return None
    return "auto" if value is True else value


def output_cache(runtime) -> OutputCache | None:
    """The process's output cache with ``runtime.output_cache_mb`` as its bound, or None (``output_cache=false``)."""
    if not runtime.get("output_cache", True):
        return None
    cache = process_output_cache()
    budget = runtime.get("output_cache_mb")
    cache.budget_bytes = None if budget is None else int(budget * 2**20)
    return cache


def run_context(plan: Plan, config: DictConfig, cache: ComponentCache | None = None, progress: bool = True,
                on_preview: Callable[[StepPreview], None] | None = None) -> RunContext:
    """The context of one run of ``plan``: runtime, cache, its record begun, previews, the CPU threads set.

    ``on_preview``: called after every denoise step with a StepPreview (its image every ``preview_every`` steps);
    without it, ``preview_every > 0`` writes previews into the run's ``previews/`` folder.
    """
    runtime = config.get("runtime") or {}
    device, dtype = str(runtime.get("device", "cpu")), str(runtime.get("dtype", "float32"))
    vae_modes = {mode: bool(runtime.get(mode, False)) for mode in ("vae_slicing", "vae_tiling")}
    slicing = attention_slicing(runtime)
    offload = str(runtime.get("offload") or "none")
    ctx = RunContext(cache=cache if cache is not None else process_cache(), device=device, dtype=dtype,
                     progress=progress, compile=runtime_compile(runtime), output_cache=output_cache(runtime),
                     fingerprint=stamps, attention_slicing=slicing, offload=offload, **vae_modes)
    # attention: diffusers' default processors call torch's scaled_dot_product_attention (which picks its kernel);
    # sliced, its SlicedAttnProcessor computes the heads a slice at a time
    recorded = {"device": device, "dtype": dtype, "attention": "sdpa" if slicing is None else f"sliced ({slicing})",
                **{mode: True for mode, on in vae_modes.items() if on}, **({"offload": offload} if offload != "none" else {})}
    ctx.record = RunRecord(workflow_file=plan.workflow.path, workflow_yaml=resolved_workflow_yaml(plan),
                           versions=dict(versions()), runtime=recorded, warnings=prompt_warnings(config, plan))
    every = int(config.get("preview_every") or 0)
    if every or on_preview is not None:
        ctx.on_step = step_callback(ctx, every, bool(config.get("preview_exact")), on_preview)
    configure_threads(runtime, plan_weight_bytes(plan))
    return ctx


def run(plan: Plan, config: DictConfig, output: str | Path | Files, *, cache: ComponentCache | None = None,
        progress: bool = True, on_preview: Callable[[StepPreview], None] | None = None,
        warn: Callable[[str], None] | None = log.warning, on_write: Callable[[Path], None] | None = None) -> RunResult:
    """Execute a validated plan; its files go to ``output`` (a folder, with its manifest.json; or a writer).

    ``warn`` is told each warning of the run (default: logged; None: kept in the record only); ``on_write`` of each
    result file written (the command's Ctrl-C report).
    """
    ctx = run_context(plan, config, cache, progress, on_preview)
    for warning in ctx.record.warnings:
        if warn is not None:
            warn(warning)
    with files_of(output, ctx.record, on_write=on_write) as files:
        ctx.files = files
        outputs = execute(plan, ctx)
    return RunResult(outputs, ctx.record, list(getattr(files, "saved", [])), plan)


def run_workflow(workflow: str | None = None, overrides: list[str] | None = None, *, output_dir: str | Path | None = None,
                 cache: ComponentCache | None = None, progress: bool = False) -> RunResult:
    """Run a workflow by name or path with Hydra-style overrides, e.g. ``["prompt=a cat", "seed=3"]``.

    Images go to ``output_dir`` (default: a new temporary folder, listed in the result's ``saved``).
    """
    overrides = list(overrides or [])
    if workflow is not None:
        overrides = [f"workflow={workflow}"] + overrides
    config = compose_config(overrides)
    planned = make_plan(None, config)
    if output_dir is None:
        import tempfile

        output_dir = tempfile.mkdtemp(prefix="sdflow-")
    return run(planned, config, output_dir, cache=cache, progress=progress)
