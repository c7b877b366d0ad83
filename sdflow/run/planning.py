"""plan(workflow, config): every check before anything loads, in one pass, whichever door asked.

A workflow may be given by name (a built-in or one on SDFLOW_WORKFLOW_PATH), as a path, or already parsed
(the web API's sent text, the workflow a PNG carries for ``reproduce``): no door writes a temporary file to
get its workflow planned, and none skips a check.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable

import yaml
from omegaconf import DictConfig

from .. import nodes as _register_nodes  # noqa: F401  (importing registers the node types)
from ..engine import Plan, Problem, ValidationError, Workflow, load_workflow, resolve_interpolations, validate
from ..nodes.runtime_facts import check_hardware, check_runtime
from ..workflows import available_workflows, workflow_path
from .yaml_text import YamlBlocks


_parsed: dict[tuple, bytes] = {}  # (path, size, mtime) -> the file parsed once, pickled: a sweep plans it every job


def find_workflow(workflow: Workflow | str | Path | None, config: DictConfig) -> Workflow:
    """The workflow to plan: as given, else read from a path or a name (default: the config's ``workflow``).

    A file is parsed once per version of it (its size and modification time); each plan gets its own copy, since
    planning writes the config's values into it.
    """
    if isinstance(workflow, Workflow):
        return workflow
    name = str(workflow if workflow is not None else config.get("workflow"))
    path = workflow_path(name)
    try:
        stat = path.stat()
    except OSError:
        stat = None
    if stat is None or not path.is_file():
        if path.exists():
            return load_workflow(path)  # not a file: load_workflow names what is wrong
        known = ", ".join(available_workflows())
        raise ValidationError([Problem(str(path), None, None, f"workflow '{name}' not found (built-in workflows: {known}; "
                                       "or give a path to a .yaml file)")])
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _parsed:
        _parsed[key] = pickle.dumps(load_workflow(path), pickle.HIGHEST_PROTOCOL)
    return pickle.loads(_parsed[key])  # a copy of its own, several times faster than a deep copy


def plan(workflow: Workflow | str | Path | None, config: DictConfig,
         screen: Callable[[Workflow], list[Problem]] | None = None, hardware: bool = True) -> Plan:
    """Interpolate and validate ``workflow`` with ``config``; raises ValidationError with every problem at once.

    Checked together: the config's runtime (and, with ``hardware``, whether this machine can run it: a GPU that is
    not there, too small for the UNet), the interpolations, the workflow's fields, wiring and static checks.
    ``hardware=False``: the jobs run elsewhere (a Ray or Slurm sweep), whose workers ask check_machine before they
    load anything.
    ``screen(workflow)``: a door's own rules on the interpolated workflow (the web server's: only uploaded files),
    asked before validation opens any file or model folder it names.
    ``workflow`` is modified in place by the interpolation: give a freshly parsed one.
    """
    found = find_workflow(workflow, config)
    runtime = config.get("runtime") or {}
    problems = check_runtime(runtime)
    hardware = hardware and not problems
    if hardware:  # the device first (no model folder opened), its room once the models are known
        problems = check_hardware(runtime)
        hardware = not problems
    unresolved = resolve_interpolations(found, config)
    if unresolved:  # the workflow's own checks need its values
        raise ValidationError(problems + unresolved)
    screened = screen(found) if screen is not None else []
    if screened:
        raise ValidationError(problems + screened)
    try:
        planned = validate(found, runtime=runtime)
    except ValidationError as exc:
        raise ValidationError(problems + exc.problems) from None
    if hardware:  # still asked only when the runtime's values and the device were fine
        problems = problems + check_machine(planned, config)
    if problems:
        raise ValidationError(problems)
    return planned


def resolved_workflow_yaml(planned: Plan) -> str:
    """The workflow as it ran: interpolations replaced by their values, defaults filled in."""
    nodes: dict[str, Any] = {}
    for node_id in planned.order:
        node = planned.nodes[node_id]
        body = {"type": node.spec.name}
        body.update({name: str(ref) for name, ref in node.inputs.items()})
        body.update(node.params)
        nodes[node_id] = body
    head = yaml.dump({"description": planned.workflow.description}, Dumper=_WORKFLOW_YAML.dumper, sort_keys=False,
                     allow_unicode=True)
    return head + _WORKFLOW_YAML.dump(nodes, under="nodes")


# libyaml's emitter where PyYAML has it, each node's block kept: a sweep writes the workflow for every job
_WORKFLOW_YAML = YamlBlocks(getattr(yaml, "CSafeDumper", yaml.SafeDumper))


def check_machine(planned: Plan, config: DictConfig) -> list[Problem]:
    """What stops this machine from running ``planned`` with the config's runtime: the GPU missing, its dtype
    unsupported, less free memory than the UNet's weights take in that dtype (a lower bound: without offloading,
    the UNet is on the GPU whole). Asked where a job runs, before anything loads: a Ray or Slurm worker, whose
    driver planned with ``hardware=False``. A CPU runtime asks nothing (and imports no torch)."""
    from ..models.sources import resolve_source
    from ..models.model_source import SourceError
    from ..models.weight_files import denoiser_parameters

    runtime = config.get("runtime") or {}
    if str(runtime.get("device", "cpu")) == "cpu" or check_runtime(runtime):
        return []
    parameters = 0
    for _, _, source in params_with_role(planned, "model_source"):
        try:
            resolved = resolve_source(source) if source else None
        except SourceError:
            continue  # validation said so already; a hub model not downloaded yet is counted as nothing
        if resolved is not None:
            parameters = max(parameters, denoiser_parameters(resolved.folder, resolved.file))
    item_size = 4 if str(runtime.get("dtype", "float32")) == "float32" else 2
    return check_hardware(runtime, parameters * item_size)


def params_with_role(planned: Plan, role: str) -> list[tuple[str, str, Any]]:
    """(node id, parameter, value) of every parameter of the plan declared with ``role``."""
    return [(node_id, name, planned.nodes[node_id].params.get(name)) for node_id in planned.order
            for name in planned.nodes[node_id].spec.params_with_role(role)]


def prompt_warnings(config: DictConfig, planned: Plan) -> list[str]:
    """Words a model with a closed vocabulary (the shapes default) has never seen: it cannot draw them.

    Read from the prompts the plan actually encodes, not the config's ``prompt`` (a workflow may set its own).
    """
    model = config.get("model") or {}
    sources = {value for _, _, value in params_with_role(planned, "model_source")}
    if model.get("vocabulary") != "shapes" or "builtin:shapes" not in sources:
        return []
    from ..world.vocabulary import unknown_words, world_words

    texts = []
    for _, _, value in params_with_role(planned, "prompt"):
        texts += value if isinstance(value, list) else [value]
    unknown = list(dict.fromkeys(w for text in texts if isinstance(text, str) for w in unknown_words(text)))
    if not unknown:
        return []
    return [f"the '{model.get('path')}' model cannot draw {', '.join(repr(w) for w in unknown)}: it only knows "
            f"{', '.join(world_words())} (use model=sd15 or model.path=... for open prompts)"]
