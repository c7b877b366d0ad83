"""Validate a whole workflow against the node declarations, before anything loads.

Every problem is collected (unknown types, unknown or missing fields, bad references, type
mismatches, cycles, out-of-range parameters, then each node's own static check), and raised once.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from typing import Any

import networkx as nx

from .declare import REGISTRY, NodeSpec, Param
from .errors import Problem, ValidationError
from .workflow import Workflow


@dataclass(frozen=True)
class Ref:
    """A reference from an input port to another node's output."""

    node: str
    output: str

    def __str__(self) -> str:
        return f"{self.node}.{self.output}"


@dataclass
class PlannedNode:
    """A node ready to run: its declaration, checked parameters and input references."""

    id: str
    spec: NodeSpec
    params: dict[str, Any]
    inputs: dict[str, Ref]
    meta: dict[str, Any] = field(default_factory=dict)  # outputs' static facts from the node's check


@dataclass
class Plan:
    """A validated workflow: nodes in execution order and the graph they form."""

    workflow: Workflow
    nodes: dict[str, PlannedNode]
    order: list[str]
    graph: nx.MultiDiGraph  # one edge per wired input: two inputs may read the same node

    def consumers(self, node_id: str) -> set[str]:
        """Names of the outputs of ``node_id`` that some other node reads."""
        return {data["output"] for _, _, data in self.graph.out_edges(node_id, data=True)}


class CheckContext:
    """Handed to a node's static check: report problems against this node's fields."""

    def __init__(self, workflow: Workflow, node_id: str, problems: list[Problem], plan_nodes: dict[str, PlannedNode]):
        self.workflow = workflow
        self.node_id = node_id
        self._problems = problems
        self._nodes = plan_nodes
        self.used_outputs: set[str] = set()  # outputs of this node that other nodes read

    def problem(self, field_name: str | None, message: str, node: str | None = None) -> None:
        """Report ``message`` against a field of this node, or of ``node`` (e.g. where a bad list was given).

        Several checks may find the same fault (two denoise steps reading one prompt list): it is reported once.
        """
        found = self.workflow.problem(node or self.node_id, field_name, message)
        if found not in self._problems:
            self._problems.append(found)

    def source_of(self, input_name: str) -> str | None:
        """The ``node.output`` wired into ``input_name``, for messages that name both nodes."""
        ref = self._nodes[self.node_id].inputs.get(input_name)
        return str(ref) if ref else None

    def config_hint(self, field_name: str, node: str | None = None) -> str:
        """Where a field's value came from, when it came from the config: ' (it comes from ${key}: ...)'."""
        return _config_hint(self.workflow, node or self.node_id, field_name)

    def per_image_lengths(self, params: dict[str, Any]) -> dict[str, int]:
        """Lengths of this node's per-image parameters given as lists (seeds excluded: they set the count)."""
        spec = self._nodes[self.node_id].spec
        return {name: len(value) for name, value in params.items()
                if name in spec.params and spec.params[name].per_image and spec.params[name].type != "seeds"
                and isinstance(value, list)}

    def check_per_image_count(self, params: dict[str, Any], count: int | None, why: str) -> None:
        """Report each per-image list of this node whose length is neither ``count`` nor 1; ``why`` explains count."""
        if not count:
            return
        for name, length in self.per_image_lengths(params).items():
            if length not in (1, count):
                self.count_problem(name, count, length, why)

    def count_problem(self, field_name: str, count: int, given: int, why: str, node: str | None = None) -> None:
        """Report a per-image list of ``given`` values where ``count`` images (or one value for all) were expected."""
        expected = (f"expected {count} values (one per image: {why}) or a single value for all" if count != 1 else
                    f"expected a single value ({why}; more seeds make more images)")
        self.problem(field_name, f"{expected}, given a list of {given}{self.config_hint(field_name, node)}", node=node)


def _type_name(tp) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            "seeds": "an integer seed or a list of integer seeds"}.get(tp, str(tp))


def _param_type_name(param: Param) -> str:
    if param.per_image and param.type != "seeds":
        return f"{_type_name(param.type)}, or a list of them (one per image)"
    return _type_name(param.type)


def _config_hint(workflow: Workflow, node_id: str, field_name: str) -> str:
    entry = workflow.nodes.get(node_id)
    key = entry.config_keys.get(field_name) if entry is not None else None
    return f" (it comes from ${{{key}}}: set it on the command line, {key}=...)" if key else ""


def _given(value) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {value!r}"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_param(param: Param, value) -> str | None:
    """Return why ``value`` does not fit ``param``, or None. Catches YAML traps like ``"20"`` and ``no``."""
    if value is None:
        return None if param.nullable else f"expected {_param_type_name(param)}, given nothing (null)"
    tp = param.type
    if isinstance(value, list) and tp != "seeds":
        if not param.per_image:
            return (f"expected {_type_name(tp)}, given {_given(value)} (one value for the whole batch: "
                    "this parameter does not take a list per image)")
        if not value:
            return f"expected {_param_type_name(param)}, given an empty list"
        single = replace(param, per_image=False)
        for index, element in enumerate(value):
            reason = check_param(single, element)
            if reason:
                return f"list element {index} ({element!r}): {reason}"
        return None
    if tp == "seeds":
        seeds = value if isinstance(value, list) else [value]
        if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
            hint = " (remove the quotes)" if any(isinstance(s, str) and s.strip().lstrip("-").isdigit() for s in seeds) else ""
            return f"expected {_type_name(tp)}, given {_given(value)}{hint}"
        if any(s < 0 or s >= 2**63 for s in seeds):
            return f"seeds must be between 0 and 2**63-1, given {value!r}"
        return None
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        hint = ""
        if isinstance(value, str) and tp in (int, float) and _looks_numeric(value):
            hint = " (remove the quotes)"
        if isinstance(value, bool) and tp is str:
            hint = " (YAML reads yes/no/on/off/true/false as booleans: quote the text)"
        return f"expected {_type_name(tp)}, given {_given(value)}{hint}"
    if param.choices is not None and value not in param.choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in param.choices], n=1)
        suggestion = f"; did you mean '{close[0]}'?" if close else ""
        return f"expected one of {', '.join(map(str, param.choices))}, given {value!r}{suggestion}"
    if param.min is not None and value < param.min:
        return f"expected a value >= {param.min}, given {value!r}"
    if param.max is not None and value > param.max:
        return f"expected a value <= {param.max}, given {value!r}"
    return None


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def validate(workflow: Workflow, registry: dict[str, NodeSpec] | None = None) -> Plan:
    """Check ``workflow`` (interpolations already resolved) and return its Plan, or raise ValidationError."""
    registry = REGISTRY if registry is None else registry
    problems: list[Problem] = []
    planned: dict[str, PlannedNode] = {}

    for entry in workflow.nodes.values():
        if not isinstance(entry.type, str):
            problems.append(workflow.problem(entry.id, "type", f"expected a node type name, given {_given(entry.type)}"))
            continue
        spec = registry.get(entry.type)
        if spec is None:
            problems.append(workflow.problem(entry.id, "type", f"unknown node type '{entry.type}'"
                                             f"{_suggest(entry.type, registry)} (run 'sdflow-info nodes' for the list)"))
            continue
        params: dict[str, Any] = {}
        inputs: dict[str, Ref] = {}
        for name, value in entry.fields.items():
            if name in spec.inputs:
                if not isinstance(value, str) or value.count(".") != 1 or not all(value.split(".")):
                    problems.append(workflow.problem(entry.id, name, "expected a reference to another node's output "
                                                     f"written 'node_id.output' ({spec.inputs[name].type}), given {_given(value)}"))
                    continue
                inputs[name] = Ref(*value.split("."))
            elif name in spec.params:
                reason = check_param(spec.params[name], value)
                if reason:  # a value from the config: say where to change it
                    problems.append(workflow.problem(entry.id, name, reason + _config_hint(workflow, entry.id, name)))
                params[name] = value
            else:
                known = list(spec.inputs) + list(spec.params)
                problems.append(workflow.problem(entry.id, name, f"'{entry.type}' has no field '{name}'"
                                                 f"{_suggest(name, known)} (fields: {', '.join(known)})"))
        for name, port in spec.inputs.items():
            if name not in entry.fields and not port.optional:
                problems.append(workflow.problem(entry.id, name, f"missing input '{name}' ({port.type}): wire it to "
                                                 "another node's output, e.g. 'node_id.output'"))
        for name, param in spec.params.items():
            if name not in entry.fields:
                if param.required:
                    problems.append(workflow.problem(entry.id, name, f"missing parameter '{name}' "
                                                     f"({_param_type_name(param)})"))
                else:
                    params[name] = param.default
        planned[entry.id] = PlannedNode(entry.id, spec, params, inputs)

    graph = nx.MultiDiGraph()
    graph.add_nodes_from(workflow.nodes)
    for node_id, pn in planned.items():
        for name, ref in pn.inputs.items():
            if ref.node not in workflow.nodes:
                problems.append(workflow.problem(node_id, name, f"refers to node '{ref.node}', which does not exist"
                                                 f"{_suggest(ref.node, workflow.nodes)}"))
                continue
            source = planned.get(ref.node)
            if source is None:  # the source node itself is broken; its problem is already reported
                continue
            out_type = source.spec.outputs.get(ref.output)
            if out_type is None:
                problems.append(workflow.problem(node_id, name, f"node '{ref.node}' ({source.spec.name}) has no output "
                                                 f"'{ref.output}'{_suggest(ref.output, source.spec.outputs)} (outputs: "
                                                 f"{', '.join(f'{k} ({v})' for k, v in source.spec.outputs.items())})"))
                continue
            expected = pn.spec.inputs[name].type
            if out_type != expected:
                problems.append(workflow.problem(node_id, name, f"expected {expected}, given {out_type} from "
                                                 f"'{ref}'"))
            graph.add_edge(ref.node, node_id, input=name, output=ref.output)

    order: list[str] = []
    try:
        order = list(nx.lexicographical_topological_sort(graph))
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(graph)
        path = " -> ".join([edge[0] for edge in cycle] + [cycle[0][0]])
        first = cycle[0][1]
        field_name = graph.edges[cycle[0]]["input"]
        problems.append(workflow.problem(first, field_name, f"the workflow has a cycle: {path} (each node "
                                         "feeds the next); a node cannot depend on its own output"))

    if problems:
        raise ValidationError(problems)

    # Static checks: cheap facts (model configs, sizes) flow along the edges before anything loads.
    for node_id in order:
        pn = planned[node_id]
        if pn.spec.check is None:
            continue
        inputs_meta = {}
        missing_upstream = False
        for name, ref in pn.inputs.items():
            upstream = planned[ref.node].meta
            if upstream is None:
                missing_upstream = True
                break
            inputs_meta[name] = upstream.get(ref.output)
        if missing_upstream:
            pn.meta = None
            continue
        before = len(problems)
        ctx = CheckContext(workflow, node_id, problems, planned)
        ctx.used_outputs = {data["output"] for _, _, data in graph.out_edges(node_id, data=True)}
        pn.meta = pn.spec.check(pn.params, inputs_meta, ctx) or {}
        if len(problems) > before:
            pn.meta = None  # downstream checks would only repeat this node's problem
    if problems:
        raise ValidationError(problems)
    return Plan(workflow, planned, order, graph)
