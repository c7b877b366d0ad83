"""Run a workflow from Python: compose the config, validate everything, then execute.

The CLI, the tests and the benchmarks all come through here, so they run exactly the same path.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from . import __version__
from . import nodes as _register_nodes  # noqa: F401  (importing registers the node types)
from .engine import (ComponentCache, Plan, Problem, RunContext, ValidationError, execute, load_workflow,
                     process_cache, resolve_interpolations, validate)
from .nodes.images import pixels_to_pil
from .nodes.types import Images

PACKAGE = Path(__file__).resolve().parent
CONF_DIR = PACKAGE / "conf"  # shipped inside the package: a wheel install finds them too
WORKFLOWS_DIR = PACKAGE / "workflows"
log = logging.getLogger("sdflow")


@dataclass
class RunResult:
    """What a run made: every node's outputs, the reproducibility record, saved files, cache stats."""

    outputs: dict[str, dict[str, Any]]
    record: dict[str, Any]
    saved: list[Path] = field(default_factory=list)
    plan: Plan | None = None

    def images(self, node: str | None = None) -> list:
        """PIL images of ``node``'s IMAGE output (default: the last node in order that produced images)."""
        candidates = [node] if node else list(reversed(self.plan.order))
        for node_id in candidates:
            for value in self.outputs.get(node_id, {}).values():
                if isinstance(value, Images):
                    return pixels_to_pil(value.pixels)
        return []


def workflow_dirs() -> list[Path]:
    """Folders searched for workflow names: the user's own (``SDFLOW_WORKFLOW_PATH``, os.pathsep-separated) first."""
    users = [Path(p).expanduser() for p in os.environ.get("SDFLOW_WORKFLOW_PATH", "").split(os.pathsep) if p]
    return users + [WORKFLOWS_DIR]


def workflow_path(name_or_path: str) -> Path:
    """A workflow name (``text2img``) from the workflow folders, or a path to a user's own file.

    Only something that looks like a path (a ``.yaml``/``.yml`` suffix or a ``/``) is read as one, so a
    folder named ``chain`` in the current directory never shadows the built-in ``chain`` workflow.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml") or "/" in name_or_path or os.sep in name_or_path:
        return candidate
    for folder in workflow_dirs():
        if (folder / f"{name_or_path}.yaml").is_file():
            return folder / f"{name_or_path}.yaml"
    return WORKFLOWS_DIR / f"{name_or_path}.yaml"


def available_workflows() -> list[str]:
    return sorted({p.stem for folder in workflow_dirs() for p in folder.glob("*.yaml")})


def quote_text_values(overrides: list[str]) -> list[str]:
    """Quote single-run override values that contain commas, so ``prompt=a cat, blue`` is text.

    Hydra reads an unquoted comma as a sweep and refuses it outside ``-m``; in a single run a comma can
    only be text. Lists (``seed=[1,2]``) and values the user already quoted are left alone.
    """
    quoted = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and "," in value and value[:1] not in ("[", "{", "'", '"') and "(" not in value:
            quote = "'" if '"' in value else '"'
            override = f"{key}={quote}{value}{quote}"
        quoted.append(override)
    return quoted


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The Hydra config for ``overrides``, composed from conf/ exactly as the CLI would."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    overrides = quote_text_values(list(overrides or []))
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=list(overrides or []))
    with initialize_config_module(config_module="sdflow.conf", version_base=None):
        return compose(config_name="config", overrides=list(overrides or []))


def plan_workflow(config: DictConfig) -> Plan:
    """Parse, interpolate and validate the workflow the config names; raises ValidationError."""
    name = config.get("workflow")
    path = workflow_path(str(name))
    if not path.exists():
        known = ", ".join(available_workflows())
        raise ValidationError([Problem(str(path), None, None, f"workflow '{name}' not found (built-in workflows: {known}; "
                                       "or give a path to a .yaml file)")])
    workflow = load_workflow(path)
    problems = resolve_interpolations(workflow, config)
    if problems:
        raise ValidationError(problems)
    return validate(workflow)


def prompt_warnings(config: DictConfig) -> list[str]:
    """Words a model with a closed vocabulary (the shapes default) has never seen: it cannot draw them."""
    model = config.get("model") or {}
    if model.get("vocabulary") != "shapes" or model.get("path") != "builtin:shapes" or not isinstance(
            config.get("prompt"), str):
        return []
    from .world.vocabulary import unknown_words, world_words

    unknown = unknown_words(config.prompt)
    if not unknown:
        return []
    return [f"the '{model.get('path')}' model cannot draw {', '.join(repr(w) for w in unknown)}: it only knows "
            f"{', '.join(world_words())} (use model=sd15 or model.path=... for open prompts)"]


def versions() -> dict[str, str]:
    found = {"sdflow": __version__}
    for package in ("diffusers", "torch", "transformers"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def resolved_workflow_yaml(plan: Plan) -> str:
    """The workflow as it ran: interpolations replaced by their values, defaults filled in."""
    nodes = {}
    for node_id in plan.order:
        planned = plan.nodes[node_id]
        body = {"type": planned.spec.name}
        body.update({name: str(ref) for name, ref in planned.inputs.items()})
        body.update(planned.params)
        nodes[node_id] = body
    return yaml.safe_dump({"description": plan.workflow.description, "nodes": nodes}, sort_keys=False)


def run_plan(plan: Plan, config: DictConfig, output_dir: str | Path | None, cache: ComponentCache | None = None,
             progress: bool = True) -> RunResult:
    """Execute a validated plan; images go to ``output_dir``."""
    runtime = config.get("runtime") or {}
    ctx = RunContext(
        cache=cache if cache is not None else process_cache(),
        device=str(runtime.get("device", "cpu")),
        dtype=str(runtime.get("dtype", "float32")),
        output_dir=Path(output_dir) if output_dir is not None else None,
        progress=progress,
        workflow_file=plan.workflow.path,
    )
    ctx.record.update({
        "workflow_file": plan.workflow.path,
        "workflow_yaml": resolved_workflow_yaml(plan),
        "versions": versions(),
        "runtime": {"device": ctx.device, "dtype": ctx.dtype},
    })
    for warning in prompt_warnings(config):
        log.warning(warning)
        ctx.record.setdefault("warnings", []).append(warning)
    outputs = execute(plan, ctx)
    return RunResult(outputs, ctx.record, [Path(p) for p in ctx.record.get("saved", [])], plan)


def run_workflow(workflow: str | None = None, overrides: list[str] | None = None, *, output_dir: str | Path | None = None,
                 cache: ComponentCache | None = None, progress: bool = False) -> RunResult:
    """Run a workflow by name or path with Hydra-style overrides, e.g. ``["prompt=a cat", "seed=3"]``.

    Images go to ``output_dir`` (default: a new temporary folder, listed in the result's ``saved``).
    """
    overrides = list(overrides or [])
    if workflow is not None:
        overrides = [f"workflow={workflow}"] + overrides
    config = compose_config(overrides)
    plan = plan_workflow(config)
    if output_dir is None:
        import tempfile

        output_dir = tempfile.mkdtemp(prefix="sdflow-")
    return run_plan(plan, config, output_dir, cache=cache, progress=progress)


def config_to_dict(config: DictConfig) -> dict:
    return OmegaConf.to_container(config, resolve=True)
