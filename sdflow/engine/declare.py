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
class ValueType:
    """A parameter type of a node vocabulary's own, checked by its own function (e.g. seeds).

    ``check(value)`` returns why a value does not fit, or None. ``whole_list``: a list is one value of this
    type (a list of seeds), never a list of per-image values; such a parameter sets how many images a run
    makes rather than following that count.
    """

    name: str
    description: str
    check: Callable[[Any], str | None]
    whole_list: bool = False

    def __post_init__(self):
        _VALUE_TYPES.setdefault(self.name, self)

    def __str__(self) -> str:
        return self.name

    def __reduce__(self):
        # Unpickled (a plan sent to a Ray or Slurm worker) as this process's own instance: code asks `is SEEDS`
        return _value_type, (self.name, self.description, self.check, self.whole_list)


_VALUE_TYPES: dict[str, ValueType] = {}  # each ValueType by name, the first made


def _value_type(name: str, description: str, check: Callable[[Any], str | None], whole_list: bool) -> ValueType:
    """The ValueType this process has under ``name`` if it is the same one, else a new one."""
    known = _VALUE_TYPES.get(name)
    if known is not None and (known.description, known.check, known.whole_list) == (description, check, whole_list):
        return known
    return ValueType(name, description, check, whole_list)


@dataclass(frozen=True)
class Param:
    """A literal parameter with its type, default and allowed range or choices.

    ``type`` is one of int, float, str, bool, list (its elements are the node's check's to judge), or a ValueType.
    ``per_image``: the value may also be a non-empty list, one element per image of the batch (a single
    value, or a list of one, applies to every image); the images' count comes from their seeds.
    ``count_of``: this parameter is how many images the parameter it names makes when that one is a single
    value (batch_size for one seed): outer code that concatenates per-image values asks for it here.
    ``role``: what the parameter is to code outside the node (``model_source``, ``prompt``, ``input_file``...),
    so that code asks the declaration instead of matching node types by name. The engine gives it no meaning.
    """

    type: Any
    default: Any = REQUIRED
    doc: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    nullable: bool = False
    per_image: bool = False
    count_of: str | None = None
    role: str | None = None

    @property
    def whole_list(self) -> bool:
        """Whether a list given here is one value (of a ValueType such as seeds, or of type list)."""
        return self.type is list or (isinstance(self.type, ValueType) and self.type.whole_list)

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

    def params_with_role(self, role: str) -> list[str]:
        """Names of the parameters declared with ``role``."""
        return [name for name, param in self.params.items() if param.role == role]


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
        counted = {p.count_of for p in spec.params.values() if p.count_of} - set(spec.params)
        if counted:
            raise ValueError(f"node type '{name}': count_of names {sorted(counted)}, which it does not declare")
        REGISTRY[name] = spec
        fn.spec = spec
        return fn

    return register
