"""The output cache: a node whose type, parameters and inputs are the same as a run before is not run again.

A node's key (its signature) is its type, its parameter values as the plan gives them (per-image lists as
they are: a fused batch's values are its own), the runtime (device, dtype, compile) and, for each input, the
key of the node that made it and which output; an input that other nodes read before this one also counts
their keys, since a value with random state (a generator) is advanced by each node that draws from it. So a
node that draws noise is reused only when its seeds are equal, and a changed value changes the key of every
node below it (ComfyUI keys its cache the same way: comfy_execution/caching.py).

What a reused node hands on is what it made: its outputs (a value with random state hands out a copy of its
state as it was when the node finished, ``for_reuse()``) and what it noted in the run record (entries,
fallbacks, warnings). Outputs the component cache already holds (loaded models) are not kept twice. The cache
is bounded by bytes, least recently used evicted first, like the component cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .cache import ComponentCache, size_in_bytes
from .record import Entry, Fallback

log = logging.getLogger("sdflow.reuse")


def node_key(node_type: str, params: dict[str, Any], input_keys: dict[str, str], runtime: tuple) -> str:
    """The signature of one node run (see the module's docstring)."""
    text = json.dumps([node_type, params, input_keys, list(runtime)], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def value_bytes(value: Any, components: ComponentCache | None = None) -> int:
    """Bytes of the tensors a value holds: a module's weights, or the tensors among a dataclass's fields. A module
    ``components`` holds counts nothing: it is there already (a ControlNet condition names its cached ControlNet)."""
    if hasattr(value, "parameters"):
        return 0 if components is not None and components.key_of(value) is not None else size_in_bytes(value)
    if hasattr(value, "element_size") and hasattr(value, "numel"):
        return value.element_size() * value.numel()
    fields = getattr(value, "__dataclass_fields__", None)
    if fields:
        return sum(value_bytes(getattr(value, name), components) for name in fields)
    if isinstance(value, (list, tuple)):
        return sum(value_bytes(v, components) for v in value)
    return 0


def for_reuse(value: Any) -> Any:
    """A copy of ``value`` safe to hand out again: its own random state where it has some, else the value itself."""
    copy = getattr(value, "for_reuse", None)
    return copy() if callable(copy) else value


@dataclass
class NodeRun:
    """What one node run made: its outputs and what it noted in the run record."""

    outputs: dict[str, Any]
    entries: list[Entry] = field(default_factory=list)
    fallbacks: list[Fallback] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    size: int = 0


@dataclass
class ReuseStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes_held: int = 0

    def __str__(self) -> str:
        return f"{self.hits} reused, {self.misses} run, {self.evictions} evicted, {self.bytes_held / 2**20:.1f} MiB held"


class OutputCache:
    """Node runs kept by their signature, least recently used evicted past ``budget_bytes``."""

    def __init__(self, budget_bytes: int | None = 2 * 2**30):
        self.budget_bytes = budget_bytes
        self.stats = ReuseStats()
        self._runs: OrderedDict[str, NodeRun] = OrderedDict()

    def __len__(self) -> int:
        return len(self._runs)

    def get(self, key: str) -> NodeRun | None:
        """The run kept under ``key`` with outputs safe to hand on, or None (counted as a miss)."""
        run = self._runs.get(key)
        if run is None:
            self.stats.misses += 1
            return None
        self._runs.move_to_end(key)
        self.stats.hits += 1
        return NodeRun({name: for_reuse(v) for name, v in run.outputs.items()}, run.entries, run.fallbacks,
                       run.warnings, run.size)

    def put(self, key: str, run: NodeRun, components: ComponentCache | None = None) -> bool:
        """Keep ``run`` (its outputs as they are now); False when there is nothing worth keeping or no room.

        Outputs held by ``components`` (models the component cache loaded) are not counted twice; a run whose
        every output is one of those is not kept: loading it again is a component cache hit.
        """
        held = [v is None or (components is not None and components.key_of(v) is not None) for v in run.outputs.values()]
        if all(held):
            return False
        size = sum(value_bytes(v, components) for v, h in zip(run.outputs.values(), held) if not h)
        if self.budget_bytes is not None and size > self.budget_bytes:
            return False
        if key in self._runs:
            self.stats.bytes_held -= self._runs.pop(key).size
        self._runs[key] = NodeRun({name: for_reuse(v) for name, v in run.outputs.items()}, list(run.entries),
                                  list(run.fallbacks), list(run.warnings), size)
        self.stats.bytes_held += size
        while self.budget_bytes is not None and self.stats.bytes_held > self.budget_bytes:
            _, evicted = self._runs.popitem(last=False)
            self.stats.bytes_held -= evicted.size
            self.stats.evictions += 1
        return True

    def clear(self) -> None:
        self._runs.clear()
        self.stats.bytes_held = 0


@functools.cache
def process_output_cache() -> OutputCache:
    """The one output cache of this process: shared by the jobs of a sweep and by every run (web UI, Python)."""
    return OutputCache()
