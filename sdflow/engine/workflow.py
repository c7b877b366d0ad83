"""Parse a workflow file into nodes, keeping line numbers, and resolve its ``${...}`` interpolations.

A workflow file is a YAML mapping with an optional ``description`` and a ``nodes`` mapping of node
ids to nodes; each node has a ``type`` and fields. Parsing is purely structural: which fields are
ports and which are parameters is decided later from the node's declaration, never from the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from .errors import Problem, ValidationError

# Only plain ``${dotted.key}``: resolvers (``${oc.env:HOME}``) could read the environment or run code.
_INTERPOLATION = re.compile(r"\$\{([^}]*)\}")
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
_NODE_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


NO_RESOLVERS = "only plain config keys like ${prompt} or ${model.path} may be interpolated (no resolvers)"


def resolver_in(text: str) -> str | None:
    """The first ``${...}`` of ``text`` that is not a plain config key (a resolver), or None."""
    for key in _INTERPOLATION.findall(text):
        if not _PLAIN_KEY.match(key.strip()):
            return f"${{{key}}}"
    return None


@dataclass
class NodeEntry:
    """One node as written in the file: its id, type and raw fields, with line numbers."""

    id: str
    type: Any
    fields: dict[str, Any]
    line: int | None
    field_lines: dict[str, int] = field(default_factory=dict)
    config_keys: dict[str, str] = field(default_factory=dict)  # field -> the config key it was ${...} of


@dataclass
class Workflow:
    """A parsed workflow file."""

    path: str
    description: str
    nodes: dict[str, NodeEntry]
    text: str

    def problem(self, node: str | None, field_name: str | None, message: str) -> Problem:
        line = None
        if node in self.nodes:
            entry = self.nodes[node]
            line = entry.field_lines.get(field_name, entry.line) if field_name else entry.line
        return Problem(self.path, node, field_name, message, line)


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records the line of every mapping key (1-based)."""


def _compose_lines(text: str) -> dict[tuple, int]:
    lines: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value
                lines.setdefault(path + (key,), key_node.start_mark.line + 1)
                walk(value_node, path + (key,))

    root = yaml.compose(text, Loader=_LineLoader)
    if root is not None:
        walk(root, ())
    return lines


def _duplicate_keys(text: str) -> list[tuple[tuple, int]]:
    """YAML silently keeps the last of two equal keys; a duplicated node id is almost always a mistake."""
    found = []

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, value_node in node.value:
                if key_node.value in seen:
                    found.append((path + (key_node.value,), key_node.start_mark.line + 1))
                seen.add(key_node.value)
                walk(value_node, path + (key_node.value,))

    walk(yaml.compose(text, Loader=_LineLoader), ())
    return found


def parse_workflow(text: str, path: str) -> Workflow:
    """Parse workflow text; raises ValidationError listing every structural problem."""
    try:
        data = yaml.safe_load(text)
        lines = _compose_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise ValidationError([Problem(path, None, None, f"not valid YAML: {reason}", line)]) from None

    problems = [
        Problem(path, key_path[1] if len(key_path) > 1 else None, key_path[2] if len(key_path) > 2 else None,
                f"'{key_path[-1]}' appears twice; YAML would silently keep only the last one", line)
        for key_path, line in _duplicate_keys(text)
    ]
    if not isinstance(data, dict):
        raise ValidationError([Problem(path, None, None, "expected a mapping with a 'nodes' section, "
                                       f"given {type(data).__name__}", 1)])
    unknown_top = sorted(set(map(str, data)) - {"description", "nodes"})
    for key in unknown_top:
        problems.append(Problem(path, None, None, f"unknown top-level key '{key}' (expected 'description' and 'nodes')",
                                lines.get((key,))))
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, dict) or not raw_nodes:
        problems.append(Problem(path, None, "nodes", "expected a non-empty mapping of node ids to nodes, "
                                f"given {_describe(raw_nodes)}", lines.get(("nodes",))))
        raise ValidationError(problems)

    nodes: dict[str, NodeEntry] = {}
    for node_id, body in raw_nodes.items():
        node_id = str(node_id)
        line = lines.get(("nodes", node_id))
        if not _NODE_ID.match(node_id):
            problems.append(Problem(path, node_id, None, "a node id must be a name of letters, digits and '_' "
                                    "(it is used in references like 'node_id.output')", line))
        if not isinstance(body, dict):
            problems.append(Problem(path, node_id, None, f"expected a mapping with a 'type', given {_describe(body)}", line))
            continue
        fields = {str(k): v for k, v in body.items() if k != "type"}
        field_lines = {k: lines.get(("nodes", node_id, k), line) for k in list(fields) + ["type"]}
        nodes[node_id] = NodeEntry(node_id, body.get("type"), fields, line, field_lines)
    if problems:
        raise ValidationError(problems)
    description = data.get("description") or ""
    return Workflow(path, str(description), nodes, text)


def load_workflow(path: str | Path) -> Workflow:
    """Read and parse a workflow file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationError([Problem(str(path), None, None, f"cannot read workflow file: {exc.strerror}")]) from None
    return parse_workflow(text, str(path))


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"


def resolve_interpolations(workflow: Workflow, config: DictConfig | dict | None) -> list[Problem]:
    """Replace ``${key}`` in every field by the config's value, in place; return the problems found.

    A field that is exactly one interpolation takes the config value with its type (``${seed}`` gives
    an int); an interpolation inside a longer string is substituted as text.
    """
    if config is None:
        config = OmegaConf.create({})
    elif not isinstance(config, DictConfig):
        config = OmegaConf.create(config)
    problems: list[Problem] = []
    raw = OmegaConf.to_container(config, resolve=False)  # values as written: most need no resolving
    found_values: dict[str, Any] = {}

    def config_value(key: str, seen: tuple = ()) -> Any:
        """The config's value at ``key``, resolved (``_MISSING`` when there is none); each key looked up once.

        A value that only names another (``${model.width}``) is followed here; anything else with an
        interpolation (a resolver, text around one) is resolved by OmegaConf.
        """
        if key not in found_values:
            value: Any = raw
            for part in key.split("."):
                value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
            whole = _INTERPOLATION.fullmatch(value) if isinstance(value, str) else None
            if whole and _PLAIN_KEY.match(whole.group(1).strip()) and whole.group(1).strip() not in seen + (key,):
                value = config_value(whole.group(1).strip(), seen + (key,))
            elif value is not _MISSING and "${" in repr(value):
                value = OmegaConf.select(config, key, default=_MISSING, throw_on_missing=False)
                if OmegaConf.is_config(value):
                    value = OmegaConf.to_container(value, resolve=True)
            elif value == "???":
                value = None  # as OmegaConf.select gives a missing value
            found_values[key] = value
        return found_values[key]

    def resolve(value, node_id, field_name):
        if isinstance(value, list):
            return [resolve(v, node_id, field_name) for v in value]
        if isinstance(value, dict):
            return {k: resolve(v, node_id, field_name) for k, v in value.items()}
        if not isinstance(value, str) or "${" not in value:
            return value
        keys = _INTERPOLATION.findall(value)
        resolver = resolver_in(value)
        if resolver:
            problems.append(workflow.problem(node_id, field_name, f"'{resolver}': {NO_RESOLVERS}"))
            return value
        found = {}
        for key in keys:
            key = key.strip()
            selected = config_value(key)
            if selected is _MISSING:
                problems.append(workflow.problem(node_id, field_name,
                                                 f"'${{{key}}}' is not in the config; pass it on the command line "
                                                 f"({key}=...) or add it to sdflow/conf/config.yaml"))
                return value
            found[key] = selected
        whole = _INTERPOLATION.fullmatch(value)
        if whole:
            workflow.nodes[node_id].config_keys[field_name] = whole.group(1).strip()
            return found[whole.group(1).strip()]
        return _INTERPOLATION.sub(lambda m: str(found[m.group(1).strip()]), value)

    for entry in workflow.nodes.values():
        entry.type = resolve(entry.type, entry.id, "type")
        for name in list(entry.fields):
            entry.fields[name] = resolve(entry.fields[name], entry.id, name)
    return problems


_MISSING = object()
