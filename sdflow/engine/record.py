"""The run record: what a run's nodes did that its outputs must say, as typed entries, and what happened on the way.

A node notes an entry (a dataclass of its vocabulary's own, e.g. the seeds it drew) under its node id; a
retry that took another way is a typed ``Fallback`` event. Each entry class names the ``section`` it is
kept (and written) under. Its fields declare what they hold, so code that takes the share of some images
(a fused sweep's job) never guesses from a list's length:

- ``per_image()``: one value per image of the run, a list (or None: nothing per image); a share is its slice;
- ``param_value(name)``: the node's parameter ``name`` as given; a share takes the job's own value;
- anything else belongs to the whole run.

The record is written as JSON (``to_json``) with its schema version, into every PNG and manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, ClassVar, TypeVar

SCHEMA_VERSION = 2  # 1: the untyped record of sdflow <= 0.1.0 (no "schema" key); 2: typed entries, fallback events

E = TypeVar("E", bound="Entry")


def per_image(**kwargs) -> Any:
    """A field holding one value per image of the run (a list)."""
    return field(metadata={"per_image": True}, **kwargs)


def param_value(name: str, **kwargs) -> Any:
    """A field holding the node's parameter ``name`` as given (one value, or a list with one per image)."""
    return field(metadata={"param": name}, **kwargs)


@dataclass
class Entry:
    """Base of a vocabulary's record entries: dataclasses with a ``section`` name."""

    section: ClassVar[str] = ""

    def to_json(self) -> Any:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def share(self, start: int, count: int, param: Callable[[str], Any]) -> Entry:
        """This entry for images ``start``..``start + count`` of its run; ``param(name)``: their node's own value."""
        changes = {}
        for f in fields(self):
            if f.metadata.get("per_image") and getattr(self, f.name) is not None:
                changes[f.name] = list(getattr(self, f.name))[start:start + count]
            elif f.metadata.get("param"):
                changes[f.name] = param(f.metadata["param"])
        return replace(self, **changes)


@dataclass(frozen=True)
class Fallback:
    """A retry that made the run take another way (a smaller batch, tiles, float32): said, never silent.

    ``node``: the node that fell back (None: the run as a whole, e.g. a fused batch split in two);
    ``kind``: what it did, for code (``batch_split``, ``tiled_decode``, ``float32_retry``, ...).
    """

    node: str | None
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.node}: {self.detail}" if self.node else self.detail

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "kind": self.kind, "text": str(self)}


@dataclass
class RunRecord:
    """What makes a run's outputs reproducible and honest: its workflow as it ran, versions, runtime, each node's
    entries (``entries[section][node_id]``), fallbacks, warnings, node timings, and the fused batch it ran in."""

    workflow_file: str = ""
    workflow_yaml: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    entries: dict[str, dict[str, Entry]] = field(default_factory=dict)
    fallbacks: list[Fallback] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    batch: dict[str, Any] | None = None  # a fused sweep job's: {"jobs": [job numbers], "images": count}
    reused: list[str] = field(default_factory=list)  # nodes whose outputs came from the output cache

    def note(self, node_id: str, entry: Entry) -> None:
        """Keep ``entry`` as what node ``node_id`` did (one entry per node and section)."""
        self.entries.setdefault(entry.section, {})[node_id] = entry

    def of(self, kind: type[E]) -> dict[str, E]:
        """``{node_id: entry}`` of every entry of class ``kind``."""
        return {node_id: entry for node_id, entry in self.entries.get(kind.section, {}).items() if isinstance(entry, kind)}

    def get(self, kind: type[E], node_id: str | None) -> E | None:
        return self.of(kind).get(node_id) if node_id is not None else None

    def fallback(self, node: str | None, kind: str, detail: str) -> Fallback:
        event = Fallback(node, kind, detail)
        self.fallbacks.append(event)
        return event

    def share(self, start: int, count: int, params: Callable[[str, str], Any]) -> RunRecord:
        """The record of images ``start``..``start + count`` of this run, as if they had run alone (a fused job's).

        ``params(node_id, name)``: the job's own value of a node's parameter. Fallbacks and warnings are the run's.
        """
        entries = {section: {node_id: entry.share(start, count, lambda name, node_id=node_id: params(node_id, name))
                             for node_id, entry in by_node.items()}
                   for section, by_node in self.entries.items()}
        return replace(self, entries=entries, fallbacks=list(self.fallbacks), warnings=list(self.warnings),
                       timings_s=dict(self.timings_s), reused=list(self.reused))

    def to_json(self) -> dict[str, Any]:
        """The record as written into PNGs (timings and reused nodes left out: they say how a run went, not what it
        made; the manifest has them)."""
        data: dict[str, Any] = {"schema": SCHEMA_VERSION, "workflow_file": self.workflow_file,
                                "workflow_yaml": self.workflow_yaml, "versions": dict(self.versions),
                                "runtime": dict(self.runtime)}
        for section, by_node in self.entries.items():
            data[section] = {node_id: entry.to_json() for node_id, entry in by_node.items()}
        if self.fallbacks:
            data["fallbacks"] = [event.to_json() for event in self.fallbacks]
        if self.warnings:
            data["warnings"] = list(self.warnings)
        if self.batch is not None:
            data["batch"] = dict(self.batch)
        return data
