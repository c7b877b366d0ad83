"""Validate a whole workflow against the node declarations, before anything loads.

Every problem is collected (unknown types, unknown or missing fields, bad references, type
mismatches, cycles, out-of-range parameters, a workflow that writes nothing, and each node's own static
check), and raised once. A node's static check runs whenever its own fields and inputs are sound and
every node it reads from passed its check, even when other nodes of the workflow are broken.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import networkx as nx

from .declare import REGISTRY, NodeSpec, Param, ValueType
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
    # outputs' static facts from the node's check; None: not checked (it, or a node it reads, has a problem)
    meta: dict[str, Any] | None = field(default_factory=dict)


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

    def __init__(self, workflow: Workflow, node_id: str, problems: list[Problem], plan_nodes: dict[str, PlannedNode],
                 runtime: Mapping | None = None):
        self.workflow = workflow
        self.runtime = runtime or {}  # the config's runtime group: the limits a check holds values to (max_pixels)
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
        """Lengths of this node's per-image parameters given as lists (whole-list types such as seeds set the count)."""
        spec = self._nodes[self.node_id].spec
        return {name: len(value) for name, value in params.items()
                if name in spec.params and spec.params[name].per_image and not spec.params[name].whole_list
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
    if isinstance(tp, ValueType):
        return tp.description
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}.get(tp, str(tp))


def _param_type_name(param: Param) -> str:
    if param.per_image and not param.whole_list:
        return f"{_type_name(param.type)}, or a list of them (one per image)"
    return _type_name(param.type)


def _config_hint(workflow: Workflow, node_id: str, field_name: str) -> str:
    entry = workflow.nodes.get(node_id)
    key = entry.config_keys.get(field_name) if entry is not None else None
    return f" (it comes from ${{{key}}}: set it on the command line, {key}=...)" if key else ""


def given_text(value) -> str:
    """A value as an error message names it: "the string '20'", "the boolean false", "int 3"."""
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
    if isinstance(value, list) and not param.whole_list:
        if not param.per_image:
            return (f"expected {_type_name(tp)}, given {given_text(value)} (one value for the whole batch: "
                    "this parameter does not take a list per image)")
        if not value:
            return f"expected {_param_type_name(param)}, given an empty list"
        single = replace(param, per_image=False)
        for index, element in enumerate(value):
            reason = check_param(single, element)
            if reason:
                return f"list element {index} ({element!r}): {reason}"
        return None
    if isinstance(tp, ValueType):
        return tp.check(value)
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
        or (tp is list and isinstance(value, list))  # its elements are the node's check's to judge
    )
    if not ok:
        hint = ""
        if isinstance(value, str) and tp in (int, float) and _looks_numeric(value):
            hint = " (remove the quotes)"
        if isinstance(value, bool) and tp is str:
            hint = " (YAML reads yes/no/on/off/true/false as booleans: quote the text)"
        return f"expected {_type_name(tp)}, given {given_text(value)}{hint}"
    # NaN passes every range test: guidance=nan would turn CFG off without a word.
    if isinstance(value, float) and not math.isfinite(value):
        return f"expected a finite number, given {value!r}"
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


def validate(workflow: Workflow, registry: dict[str, NodeSpec] | None = None, runtime: Mapping | None = None) -> Plan:
    """Check ``workflow`` (interpolations already resolved) and return its Plan, or raise ValidationError.
    ``runtime``: the config's runtime group, which node checks read their limits from (CheckContext.runtime)."""
    registry = REGISTRY if registry is None else registry
    problems: list[Problem] = []
    planned: dict[str, PlannedNode] = {}
    unsound: set[str] = set()  # nodes with a problem in their own fields or inputs: their checks cannot run

    def report(node_id: str, field_name: str | None, message: str) -> None:
        problems.append(workflow.problem(node_id, field_name, message))
        unsound.add(node_id)

    for entry in workflow.nodes.values():
        if not isinstance(entry.type, str):
            report(entry.id, "type", f"expected a node type name, given {given_text(entry.type)}")
            continue
        spec = registry.get(entry.type)
        if spec is None:
            report(entry.id, "type", f"unknown node type '{entry.type}'{_suggest(entry.type, registry)} "
                   "(run 'sdflow-info nodes' for the list)")
            continue
        params: dict[str, Any] = {}
        inputs: dict[str, Ref] = {}
        for name, value in entry.fields.items():
            if name in spec.inputs:
                if not isinstance(value, str) or value.count(".") != 1 or not all(value.split(".")):
                    report(entry.id, name, "expected a reference to another node's output written 'node_id.output' "
                           f"({spec.inputs[name].type}), given {given_text(value)}")
                    continue
                inputs[name] = Ref(*value.split("."))
            elif name in spec.params:
                reason = check_param(spec.params[name], value)
                if reason:  # a value from the config: say where to change it
                    report(entry.id, name, reason + _config_hint(workflow, entry.id, name))
                params[name] = value
            else:
                known = list(spec.inputs) + list(spec.params)
                report(entry.id, name, f"'{entry.type}' has no field '{name}'{_suggest(name, known)} "
                       f"(fields: {', '.join(known)})")
        for name, port in spec.inputs.items():
            if name not in entry.fields and not port.optional:
                report(entry.id, name, f"missing input '{name}' ({port.type}): wire it to another node's output, "
                       "e.g. 'node_id.output'")
        for name, param in spec.params.items():
            if name not in entry.fields:
                if param.required:
                    report(entry.id, name, f"missing parameter '{name}' ({_param_type_name(param)})")
                else:
                    params[name] = param.default
        planned[entry.id] = PlannedNode(entry.id, spec, params, inputs)

    graph = nx.MultiDiGraph()
    graph.add_nodes_from(workflow.nodes)
    for node_id, pn in planned.items():
        for name, ref in pn.inputs.items():
            if ref.node not in workflow.nodes:
                report(node_id, name, f"refers to node '{ref.node}', which does not exist"
                       f"{_suggest(ref.node, workflow.nodes)}")
                continue
            source = planned.get(ref.node)
            if source is None:  # the source node itself is broken; its problem is already reported
                continue
            out_type = source.spec.outputs.get(ref.output)
            if out_type is None:
                report(node_id, name, f"node '{ref.node}' ({source.spec.name}) has no output '{ref.output}'"
                       f"{_suggest(ref.output, source.spec.outputs)} (outputs: "
                       f"{', '.join(f'{k} ({v})' for k, v in source.spec.outputs.items())})")
                continue
            expected = pn.spec.inputs[name].type
            if out_type != expected:
                report(node_id, name, f"expected {expected}, given {out_type} from '{ref}'")
            graph.add_edge(ref.node, node_id, input=name, output=ref.output)

    problems.extend(_writes_nothing(workflow, registry, planned))
    order, cyclic = _order(workflow, graph, problems)
    _run_checks(workflow, planned, graph, [n for n in order if n in planned], unsound | cyclic, problems, runtime)
    if problems:
        raise ValidationError(problems)
    return Plan(workflow, planned, order, graph)


def _writes_nothing(workflow: Workflow, registry: dict[str, NodeSpec], planned: dict[str, PlannedNode]) -> list[Problem]:
    """A workflow whose nodes only hand values on would run and leave nothing behind: say which node writes."""
    writers = {name: spec for name, spec in registry.items() if not spec.outputs}  # e.g. save_image
    if not writers or len(planned) < len(workflow.nodes) or any(not pn.spec.outputs for pn in planned.values()):
        return []  # (a node of unknown type may have been meant to write: its own problem says enough)
    ways = " or ".join(f"a {name} node with its {', '.join(f'{i} ({p.type})' for i, p in spec.inputs.items())} "
                       "wired to the output to keep" for name, spec in sorted(writers.items()))
    return [workflow.problem(None, None, f"the workflow writes nothing (no node saves a result, so a run would "
                             f"leave nothing behind); add {ways}")]


_orders: dict[tuple, list[str]] = {}  # a graph's nodes and edges -> its order (a sweep plans one graph per job)


def _order(workflow: Workflow, graph: nx.MultiDiGraph, problems: list[Problem]) -> tuple[list[str], set[str]]:
    """The nodes in a deterministic topological order, and the nodes on cycles (each cycle reported, left out)."""
    shape = (tuple(graph.nodes), tuple(graph.edges))
    if shape in _orders:
        return list(_orders[shape]), set()
    cyclic: set[str] = set()
    for component in sorted(nx.strongly_connected_components(graph), key=min):
        if len(component) == 1 and not graph.has_edge(next(iter(component)), next(iter(component))):
            continue
        cycle = nx.find_cycle(graph.subgraph(component))
        path = " -> ".join([edge[0] for edge in cycle] + [cycle[0][0]])
        problems.append(workflow.problem(cycle[0][1], graph.edges[cycle[0]]["input"], f"the workflow has a cycle: "
                                         f"{path} (each node feeds the next); a node cannot depend on its own output"))
        cyclic |= component
    # Ties go by id, but a ready node that nothing reads (save_image) goes first: what a workflow writes is
    # written as soon as it exists, not after every later stage (or a fault in one) has run.
    acyclic = graph.subgraph(set(graph) - cyclic)
    order = list(nx.lexicographical_topological_sort(acyclic, key=lambda n: (acyclic.out_degree(n) > 0, n)))
    if not cyclic:
        _orders[shape] = list(order)
    return order, cyclic


def _run_checks(workflow: Workflow, planned: dict[str, PlannedNode], graph: nx.MultiDiGraph, order: list[str],
                skip: set[str], problems: list[Problem], runtime: Mapping | None = None) -> None:
    """Static checks: cheap facts (model configs, sizes) flow along the edges before anything loads.

    A node is checked when its own declaration is sound and every node it reads passed; otherwise its
    ``meta`` is None and the nodes downstream are skipped too (they would only repeat its problem).
    """
    for node_id in skip:
        if node_id in planned:
            planned[node_id].meta = None
    for node_id in order:
        pn = planned[node_id]
        upstream = [planned.get(ref.node) for ref in pn.inputs.values()]
        if node_id in skip or any(source is None or source.meta is None for source in upstream):
            pn.meta = None
            continue
        if pn.spec.check is None:
            pn.meta = {}
            continue
        inputs_meta = dict.fromkeys(pn.spec.inputs)
        inputs_meta.update({name: planned[ref.node].meta.get(ref.output) for name, ref in pn.inputs.items()})
        before = len(problems)
        ctx = CheckContext(workflow, node_id, problems, planned, runtime)
        ctx.used_outputs = {data["output"] for _, _, data in graph.out_edges(node_id, data=True)}
        pn.meta = _checked_facts(pn.spec, pn.spec.check(pn.params, inputs_meta, ctx))
        if len(problems) > before:
            pn.meta = None  # downstream checks would only repeat this node's problem


def _checked_facts(spec: NodeSpec, facts: dict[str, Any] | None) -> dict[str, Any]:
    """A check's facts, refused unless each names a declared output and has that port's facts type.

    A misspelt output name or a stray dict would otherwise switch the downstream checks off silently.
    """
    facts = facts or {}
    for name, value in facts.items():
        port = spec.outputs.get(name)
        if port is None:
            raise TypeError(f"the check of node type '{spec.name}' returned facts for '{name}', which is not one of "
                            f"its outputs ({', '.join(spec.outputs) or 'none'})")
        if value is not None and port.facts is not None and not isinstance(value, port.facts):
            raise TypeError(f"the check of node type '{spec.name}' returned {type(value).__name__} for output "
                            f"'{name}' ({port}), which carries {port.facts.__name__}")
    return {name: facts.get(name) for name in spec.outputs}  # None: nothing known about that output
