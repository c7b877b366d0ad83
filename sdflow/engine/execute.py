"""Run a validated plan: each node once, in order, outputs passed by reference."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm.auto import tqdm

from .cache import ComponentCache
from .errors import NodeRunError, WorkflowError
from .validate import Plan

log = logging.getLogger("sdflow.run")


@dataclass
class RunContext:
    """What a running node may use besides its fields: device, cache, output folder, run record.

    ``record`` collects what makes the run reproducible (model sources, seeds, versions); nodes add to
    it and the save node writes it into each image. ``per_image`` maps ``"node.param"`` to the value of
    every per-image parameter as given (one value, or a list with one per image): see per_image_values.
    """

    cache: ComponentCache
    device: str = "cpu"
    dtype: str = "float32"
    output_dir: Path | None = None
    progress: bool = True
    record: dict[str, Any] = field(default_factory=dict)
    node_id: str = ""
    used_outputs: set[str] = field(default_factory=set)
    workflow_file: str = ""
    per_image: dict[str, Any] = field(default_factory=dict)
    compile: bool | str = False  # runtime.compile: loaders hand out compiled modules (compiled once per process)
    # called after each denoise step as on_step(node_id, step_index, total_steps, latents): progress and previews
    on_step: Callable[[str, int, int, Any], None] | None = None

    def needs(self, output: str) -> bool:
        """Whether another node reads this node's ``output`` (so it may skip making unused ones)."""
        return output in self.used_outputs

    def steps(self, iterable: Iterable, total: int | None = None, desc: str = "") -> Iterable:
        """Wrap a loop in a progress bar named after the node."""
        return tqdm(iterable, total=total, desc=desc or self.node_id, disable=not self.progress, leave=False)


def per_image_values(plan: Plan) -> dict[str, Any]:
    """``{"node.param": value}`` for every per-image parameter of ``plan`` but seeds (which travel with the images).

    A value is as the plan gives it: one for every image, or a list with one per image.
    """
    return {f"{node_id}.{name}": plan.nodes[node_id].params[name]
            for node_id in plan.order for name, param in plan.nodes[node_id].spec.params.items()
            if param.per_image and param.type != "seeds" and name in plan.nodes[node_id].params}


def value_for_image(value: Any, index: int) -> Any:
    """The element of a per-image value that belongs to image ``index`` (a single value belongs to all)."""
    if not isinstance(value, list):
        return value
    return value[0] if len(value) == 1 else value[index] if index < len(value) else None


def _check_finite(plan: Plan, node_id: str, outputs: dict[str, Any], dtype: str) -> None:
    """Stop at the node that made NaN or infinite values, rather than let them reach a file (as a black image).

    An output value that can tell has a ``finite()`` method; the engine asks nothing else of it.
    """
    planned = plan.nodes[node_id]
    for name, value in outputs.items():
        finite = getattr(value, "finite", None)
        if callable(finite) and finite() is False:
            hint = "" if dtype == "float32" else f"; or run in float32 (this run uses {dtype}, which can overflow)"
            raise NodeRunError(plan.workflow.path, node_id, planned.spec.name, FloatingPointError(
                f"produced NaN/Inf values in its output '{name}': check the weights and inputs it read{hint}"))


def execute(plan: Plan, ctx: RunContext) -> dict[str, dict[str, Any]]:
    """Run every node of ``plan``; returns each node's outputs keyed by node id."""
    ctx.per_image = per_image_values(plan)
    results: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}
    for node_id in plan.order:
        planned = plan.nodes[node_id]
        kwargs = dict(planned.params)
        for name, ref in planned.inputs.items():
            kwargs[name] = results[ref.node][ref.output]
        for name in planned.spec.inputs:
            kwargs.setdefault(name, None)  # an optional input left unwired
        ctx.node_id = node_id
        ctx.used_outputs = plan.consumers(node_id)
        start = time.perf_counter()
        try:
            outputs = planned.spec.fn(ctx, **kwargs)
        except WorkflowError:
            raise
        except Exception as exc:
            raise NodeRunError(plan.workflow.path, node_id, planned.spec.name, exc) from exc
        timings[node_id] = time.perf_counter() - start
        missing = set(planned.spec.outputs) - set(outputs or {})
        if missing:
            raise NodeRunError(plan.workflow.path, node_id, planned.spec.name,
                               RuntimeError(f"node returned no value for outputs {sorted(missing)}"))
        _check_finite(plan, node_id, outputs, ctx.dtype)
        results[node_id] = outputs
        log.debug("node %s (%s) took %.3fs", node_id, planned.spec.name, timings[node_id])
    ctx.record.setdefault("timings_s", {}).update({k: round(v, 4) for k, v in timings.items()})
    return results
