"""Run a validated plan: each node once, in order, outputs passed by reference.

``execute(plan, ctx, given=..., only=...)`` can also run part of a plan with some outputs already known
(a fused sweep runs a batch without its save nodes, then each job's save nodes on its share of the images):
the nodes that run get exactly the engine's checks either way. With ``ctx.output_cache``, a node whose
signature (type, parameters, runtime, inputs' signatures: see reuse.py) matches an earlier run is not run
again: its outputs and record entries are handed on as they were.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Protocol

from tqdm.auto import tqdm

from .cache import ComponentCache
from .errors import NodeRunError, WorkflowError
from .record import Fallback, RunRecord
from .reuse import NodeRun, OutputCache, node_key
from .validate import Plan

log = logging.getLogger("sdflow.run")


class Files(Protocol):
    """Where a run's files go: the run layer's writer, which creates new files only and lists them.

    ``render(name)`` gives the file's bytes once its final name is known (a taken name gets a number), so
    a file may say its own name. ``listed=False``: a side file (a preview), not one of the run's results.
    """

    def write(self, name: str, render: Callable[[str], bytes], node: str, listed: bool = True) -> Path: ...


@dataclass
class RunContext:
    """What a running node may use besides its fields: device, cache, where files go, the run record.

    ``record`` collects what makes the run reproducible (model sources, seeds, versions); nodes note their
    entries in it and the save node writes it into each image. ``execute`` fills in the rest while it runs:
    the plan, the node running now, every output so far (``results``), and ``per_image``, the value of
    every per-image parameter as given (``{"node.param": value}``: see per_image_values).
    """

    cache: ComponentCache
    device: str = "cpu"
    dtype: str = "float32"
    files: Files | None = None  # where its files go; None: nobody keeps them (a fused batch runs no save node)
    progress: bool = True
    record: RunRecord = field(default_factory=RunRecord)
    compile: bool | str = False  # runtime.compile: loaders hand out compiled modules (compiled once per process)
    vae_slicing: bool = False  # runtime.vae_slicing: a batch encoded/decoded one image at a time (diffusers' slicing)
    vae_tiling: bool = False  # runtime.vae_tiling: large images encoded/decoded in overlapping tiles (diffusers' tiling)
    attention_slicing: str | int | None = None  # runtime.attention_slicing: "auto", "max" or a slice size; None: off
    offload: str = "none"  # runtime.offload: loaders hand out models resting in CPU memory ("model", "sequential")
    output_cache: OutputCache | None = None  # None: every node runs (runtime.output_cache=false)
    # what a node's outputs depend on besides its parameters and inputs (the files they name), for its cache key;
    # it may raise OSError (a file gone): the node is then not reused
    fingerprint: Callable[[Any], Any] | None = None
    # called after each denoise step as on_step(node_id, step_index, total_steps, latents): progress and previews
    on_step: Callable[[str, int, int, Any], None] | None = None
    plan: Plan | None = None
    node_id: str = ""
    used_outputs: set[str] = field(default_factory=set)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_image: dict[str, Any] = field(default_factory=dict)

    @property
    def workflow_file(self) -> str:
        return self.plan.workflow.path if self.plan is not None else ""

    def needs(self, output: str) -> bool:
        """Whether another node reads this node's ``output`` (so it may skip making unused ones)."""
        return output in self.used_outputs

    def steps(self, iterable: Iterable, total: int | None = None, desc: str = "") -> Iterable:
        """Wrap a loop in a progress bar named after the node."""
        return tqdm(iterable, total=total, desc=desc or self.node_id, disable=not self.progress, leave=False)


def per_image_values(plan: Plan) -> dict[str, Any]:
    """``{"node.param": value}`` for every per-image parameter of ``plan`` but whole-list ones (seeds, which travel
    with the images). A value is as the plan gives it: one for every image, or a list with one per image.
    """
    return {f"{node_id}.{name}": plan.nodes[node_id].params[name]
            for node_id in plan.order for name, param in plan.nodes[node_id].spec.params.items()
            if param.per_image and not param.whole_list and name in plan.nodes[node_id].params}


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


def _to_run(plan: Plan, given: dict[str, dict[str, Any]], only: Collection[str] | None) -> list[str]:
    """The nodes to run, in plan order; every input they read must be made by one of them or be given."""
    order = [n for n in plan.order if n not in given and (only is None or n in only)]
    unknown = sorted(set(only or ()) - set(plan.nodes)) + sorted(set(given) - set(plan.nodes))
    if unknown:
        raise ValueError(f"execute: no node(s) {unknown} in the plan of {plan.workflow.path}")
    known = {node_id: set(outputs) for node_id, outputs in given.items()}
    for node_id in order:
        for name, ref in plan.nodes[node_id].inputs.items():
            if ref.output not in known.get(ref.node, ()):
                raise ValueError(f"execute: node '{node_id}' reads '{ref}', which is neither run nor given")
        known[node_id] = set(plan.nodes[node_id].spec.outputs)
    return order


def _readers(plan: Plan) -> dict[tuple[str, str], list[str]]:
    """(node, output) -> the nodes that read it and hand something on, in plan order (sinks only write)."""
    readers: dict[tuple[str, str], list[str]] = {}
    for node_id in plan.order:
        if plan.nodes[node_id].spec.outputs:
            for ref in plan.nodes[node_id].inputs.values():
                readers.setdefault((ref.node, ref.output), []).append(node_id)
    return readers


def _key(plan: Plan, node_id: str, keys: dict[str, str | None], readers: dict, runtime: tuple,
         fingerprint: Callable[[Any], Any] | None) -> str | None:
    """The node's signature, or None when an input's is unknown (a given value, a node that did not run) or its
    fingerprint cannot be taken."""
    inputs = {}
    for name, ref in sorted(plan.nodes[node_id].inputs.items()):
        earlier = readers.get((ref.node, ref.output), [])
        earlier = earlier[:earlier.index(node_id)] if node_id in earlier else []
        found = [keys.get(ref.node)] + [keys.get(reader) for reader in earlier]
        if any(k is None for k in found):
            return None
        inputs[name] = [ref.output] + found
    planned = plan.nodes[node_id]
    try:
        outside = fingerprint(planned) if fingerprint is not None else None
    except OSError:
        return None
    return node_key(planned.spec.name, planned.params, inputs, runtime + (outside,))


def _reuse(ctx: RunContext, node_id: str, run: NodeRun) -> dict[str, Any]:
    """Hand on a kept run's outputs, noting in this run's record what the node noted when it ran."""
    for entry in run.entries:
        ctx.record.note(node_id, entry)
    ctx.record.fallbacks += [Fallback(node_id, f.kind, f.detail) for f in run.fallbacks]
    ctx.record.warnings += [w for w in run.warnings if w not in ctx.record.warnings]
    ctx.record.reused.append(node_id)
    log.debug("node %s: reused its output of an earlier run", node_id)
    return run.outputs


def execute(plan: Plan, ctx: RunContext, given: dict[str, dict[str, Any]] | None = None,
            only: Collection[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run the nodes of ``plan`` (those in ``only``, default all) but the ``given`` ones, whose outputs are known.

    Returns every node's outputs keyed by node id, the given ones included.
    """
    given = dict(given or {})
    order = _to_run(plan, given, only)
    ctx.plan, ctx.results = plan, given
    ctx.per_image = per_image_values(plan)
    keys: dict[str, str | None] = dict.fromkeys(given)
    readers, runtime = _readers(plan), (ctx.device, ctx.dtype, str(ctx.compile), ctx.vae_slicing, ctx.vae_tiling,
                                        ctx.attention_slicing)
    for node_id in order:
        planned = plan.nodes[node_id]
        keys[node_id] = key = (_key(plan, node_id, keys, readers, runtime, ctx.fingerprint)
                               if planned.spec.outputs and ctx.output_cache is not None else None)
        kept = ctx.output_cache.get(key) if ctx.output_cache is not None and key is not None else None
        if kept is not None:
            given[node_id] = _reuse(ctx, node_id, kept)
            continue
        kwargs = dict(planned.params)
        for name, ref in planned.inputs.items():
            kwargs[name] = given[ref.node][ref.output]
        for name in planned.spec.inputs:
            kwargs.setdefault(name, None)  # an optional input left unwired
        ctx.node_id = node_id
        ctx.used_outputs = plan.consumers(node_id)
        fallbacks, warnings = len(ctx.record.fallbacks), len(ctx.record.warnings)
        start = time.perf_counter()
        try:
            outputs = planned.spec.fn(ctx, **kwargs)
        except WorkflowError:
            raise
        except Exception as exc:
            raise NodeRunError(plan.workflow.path, node_id, planned.spec.name, exc) from exc
        ctx.record.timings_s[node_id] = round(time.perf_counter() - start, 4)
        missing = set(planned.spec.outputs) - set(outputs or {})
        if missing:
            raise NodeRunError(plan.workflow.path, node_id, planned.spec.name,
                               RuntimeError(f"node returned no value for outputs {sorted(missing)}"))
        _check_finite(plan, node_id, outputs, ctx.dtype)
        if ctx.output_cache is not None and key is not None:
            noted = [by_node[node_id] for by_node in ctx.record.entries.values() if node_id in by_node]
            ctx.output_cache.put(key, NodeRun(outputs, noted, ctx.record.fallbacks[fallbacks:],
                                              ctx.record.warnings[warnings:]), ctx.cache)
        given[node_id] = outputs
        log.debug("node %s (%s) took %.3fs", node_id, planned.spec.name, ctx.record.timings_s[node_id])
    return given
