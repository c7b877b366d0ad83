"""A workflow's form: the config values its YAML interpolates, each typed from the node parameter it feeds.

Nothing here is written twice: the fields come from the workflow file (which ``${key}`` it reads), the
node declarations (type, range, choices, per-image, the parameter's doc), ``conf/config.yaml`` (the
default and its comment) and the config groups' folders (model presets, schedulers). The web UI and
``GET /api/workflows/NAME/form`` both render it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..engine import REGISTRY, Param, Workflow, parse_workflow
from ..help import CONF, config_values, group_choices
from ..nodes.types import SEEDS
from .limits import FILE_ROLE, NAME_ROLE, SERVER_ONLY_KEYS, SOURCE_ROLE

_WHOLE = re.compile(r"^\$\{\s*([^}]+?)\s*\}$")
_ANY = re.compile(r"\$\{\s*([^}]+?)\s*\}")
# Config groups a workflow reaches through ${GROUP.key}: the form offers the group's choices instead.
GROUPS = ("model", "scheduler")


@dataclass(frozen=True)
class Field:
    """One form field: a config key, how to enter it, and where its value goes.

    ``kind``: ``text``, ``int``, ``float``, ``bool``, ``choice`` (``choices``), ``seeds`` (an int or a list of
    ints), ``list`` (YAML), ``file`` (an uploaded image) or ``group`` (a config group: ``choices`` are its presets).
    ``per_image``: a list gives one value per image. ``feeds``: the ``node.param`` fields it sets.
    """

    key: str
    kind: str
    default: Any = None
    doc: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None
    nullable: bool = False
    per_image: bool = False
    feeds: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return asdict(self)


def kind_of(param: Param) -> str | None:
    """How a parameter is entered; None: not by a form (model sources, lists of files: the server's own)."""
    if param.role == FILE_ROLE:
        return "file" if param.type is str else None
    if param.role in (SOURCE_ROLE, NAME_ROLE):
        return None
    if param.type is SEEDS:
        return "seeds"
    if param.choices is not None:
        return "choice"
    return {int: "int", float: "float", bool: "bool", list: "list"}.get(param.type, "text")


def load_form(workflow_file: str | Path, config: DictConfig, chosen: dict[str, str] | None = None) -> list[Field]:
    """The form of the workflow file ``workflow_file`` (see form_fields)."""
    path = Path(workflow_file)
    return form_fields(parse_workflow(path.read_text(encoding="utf-8"), str(path)), config, chosen)


def form_fields(workflow: Workflow, config: DictConfig, chosen: dict[str, str] | None = None) -> list[Field]:
    """The fields of a parsed (not yet interpolated) workflow, with defaults read from ``config``.

    ``chosen``: the config groups' presets ``config`` was composed with (default: conf/config.yaml's).
    Ordered as ``conf/config.yaml`` lists the keys (config groups first); keys it lacks come last.
    Keys the server sets itself (``allow_pickle``, ``refiner``: see limits.SERVER_ONLY_KEYS) get no field.
    """
    comments = {key: comment for key, _, comment in config_values()}
    fields: dict[str, Field] = {}
    for entry in workflow.nodes.values():
        spec = REGISTRY.get(entry.type) if isinstance(entry.type, str) else None
        for name, value in entry.fields.items():
            if not isinstance(value, str) or "${" not in value:
                continue
            whole = _WHOLE.match(value)
            param = spec.params.get(name) if spec else None
            for key in ([whole.group(1)] if whole else _ANY.findall(value)):
                group = key.split(".")[0]
                if group in GROUPS and "." in key:
                    found = Field(group, "group", (chosen or {}).get(group, default_choice(group)), _GROUP_DOCS[group],
                                  choices=tuple(group_choices(group)))
                elif "." in key or key in SERVER_ONLY_KEYS:
                    continue
                elif whole and param is not None:
                    if kind_of(param) is None:
                        continue
                    found = Field(key, kind_of(param), config_value(config, key),
                                  comments.get(key) or param.doc, param.min, param.max, param.choices, param.nullable,
                                  param.per_image, (f"{entry.id}.{name}",))
                else:  # part of a longer text, or a field the node does not declare (validation names it)
                    found = Field(key, "text", config_value(config, key), comments.get(key, ""),
                                  feeds=(f"{entry.id}.{name}",))
                fields[found.key] = merge(fields[found.key], found) if found.key in fields else found
    order = list(GROUPS) + [key for key, _, _ in config_values()]
    return sorted(fields.values(), key=lambda f: order.index(f.key) if f.key in order else len(order))


def merge(first: Field, second: Field) -> Field:
    """One key feeding two parameters: the narrower range of both, and every field it feeds."""
    if first.kind == "group":
        return first
    low = max((v for v in (first.minimum, second.minimum) if v is not None), default=None)
    high = min((v for v in (first.maximum, second.maximum) if v is not None), default=None)
    return replace(first, minimum=low, maximum=high, nullable=first.nullable and second.nullable,
                   per_image=first.per_image and second.per_image, feeds=first.feeds + second.feeds)


_GROUP_DOCS = {
    "model": "model preset (sdflow/conf/model/): shapes is the offline default; hub presets download once",
    "scheduler": "sampler for the denoise loop (sdflow/conf/scheduler/); 'model' keeps the model's own",
}


def default_choice(group: str) -> str | None:
    """The preset conf/config.yaml's defaults list picks for ``group`` (e.g. model: shapes)."""
    import yaml

    for item in yaml.safe_load((CONF / "config.yaml").read_text(encoding="utf-8")).get("defaults", []):
        if isinstance(item, dict) and group in item:
            return item[group]
    return None


def config_value(config: DictConfig, key: str) -> Any:
    """The config's value of ``key``, resolved, as plain Python (lists as lists)."""
    value = OmegaConf.select(config, key, default=None)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def parse_seeds(text: Any) -> Any:
    """``7`` -> 7, ``1, 2, 3`` or ``[1,2,3]`` -> [1, 2, 3]; anything else is passed on for validation to name."""
    if isinstance(text, (int, list)):
        return text
    items = [t.strip() for t in str(text).strip().strip("[]").split(",") if t.strip()]
    try:
        numbers = [int(t) for t in items]
    except ValueError:
        return str(text)
    return numbers[0] if len(numbers) == 1 and "," not in str(text) and "[" not in str(text) else numbers


def sweep_values(values: dict, seeds: str, prompts: str) -> dict:
    """A sweep as one fused job: every prompt with every seed, as per-image lists of equal length."""
    seed_list = parse_seeds(seeds) if seeds.strip() else None
    prompt_list = [p.strip() for p in prompts.splitlines() if p.strip()]
    if seed_list is None and not prompt_list:
        return values
    if not isinstance(seed_list, list):
        seed_list = [seed_list if seed_list is not None else values.get("seed", 0)]
    prompt_list = prompt_list or [values.get("prompt", "")]
    values = dict(values)
    values["seed"] = [s for _ in prompt_list for s in seed_list]
    values["prompt"] = [p for p in prompt_list for _ in seed_list]
    return values


def field_of(problem, fields: list[Field]) -> str | None:
    """The form key a problem is about: the key itself (request problems) or the field that feeds its node's field."""
    if problem.node is None:
        return problem.field if any(f.key == problem.field for f in fields) else None
    for f in fields:
        if f"{problem.node}.{problem.field}" in f.feeds:
            return f.key
    return None
