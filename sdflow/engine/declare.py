"""Node declarations: a node is a function plus its typed ports and parameters, declared in one place.

Validation, error messages and the node reference in the docs are all generated from these
declarations, so nothing about a node is said twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

REQUIRED = object()  # marks a parameter without a default


@dataclass(frozen=True)
class PortType:
    """The type of value that travels along an edge, e.g. LATENTS or IMAGE.

    ``facts``: the (frozen dataclass) type of the validation facts a static check hands along this port,
    e.g. the latent channels; validation refuses a check that hands anything else. None: no facts.
    """

    name: str
    description: str
    facts: type | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Input:
    """An input port: it takes another node's output, written ``node_id.output_name``."""

    type: PortType
    doc: str = ""
    optional: bool = False


@dataclass(frozen=True)
class Param:
    """A literal parameter with its type, default and allowed range or choices.

    ``type`` is one of int, float, str, bool, list (its elements are the node's check's to judge), or ``"seeds"`` (an
    int or a list of ints).
    ``per_image``: the value may also be a non-empty list, one element per image of the batch (a single
    value, or a list of one, applies to every image); the images' count comes from their seeds.
    """

    type: Any
    default: Any = REQUIRED
    doc: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    nullable: bool = False
    per_image: bool = False

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class NodeSpec:
    """Everything sdflow knows about one node type.

    ``check(params, inputs_meta, ctx) -> outputs_meta`` runs at validation time, before any model
    loads; it reads cheap facts (config files, sizes) and reports mismatches through ``ctx.problem``.
    ``inputs_meta`` maps every declared input to the facts its source handed on (None: unknown or
    unwired); ``outputs_meta`` maps output names to facts of each output port's ``facts`` type.
    """

    name: str
    description: str
    fn: Callable[..., dict[str, Any]]
    inputs: dict[str, Input] = field(default_factory=dict)
    outputs: dict[str, PortType] = field(default_factory=dict)
    params: dict[str, Param] = field(default_factory=dict)
    check: Callable[..., dict[str, Any]] | None = None


REGISTRY: dict[str, NodeSpec] = {}


def node(
    name: str,
    description: str,
    *,
    inputs: dict[str, Input] | None = None,
    outputs: dict[str, PortType] | None = None,
    params: dict[str, Param] | None = None,
    check: Callable[..., dict[str, Any]] | None = None,
):
    """Register a function as the node type ``name``; the function gets ``ctx`` plus its fields."""

    def register(fn):
        if name in REGISTRY:
            raise ValueError(f"node type '{name}' is declared twice")
        spec = NodeSpec(name, description, fn, dict(inputs or {}), dict(outputs or {}), dict(params or {}), check)
        overlap = set(spec.inputs) & set(spec.params)
        if overlap:
            raise ValueError(f"node type '{name}': {sorted(overlap)} declared as both input and parameter")
        REGISTRY[name] = spec
        fn.spec = spec
        return fn

    return register
