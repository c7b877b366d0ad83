"""Run a workflow from Python: compose the config, validate everything, then execute.

The CLI, the tests and the benchmarks all come through here, so they run exactly the same path.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from omegaconf import DictConfig, OmegaConf

from . import __version__
from . import nodes as _register_nodes  # noqa: F401  (importing registers the node types)
from .engine import (NO_RESOLVERS, ComponentCache, Plan, Problem, RunContext, ValidationError, execute, load_workflow,
                     process_cache, resolve_interpolations, resolver_in, validate)
from .manifest import run_manifest
from .nodes.types import Images
from .runtime_env import configure_threads, plan_weight_bytes
from .workflows import WORKFLOWS_DIR, available_workflows, workflow_path  # noqa: F401  (re-exported)

CONF_DIR = Path(__file__).resolve().parent / "conf"  # shipped inside the package: a wheel install finds it too
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
        from .nodes.images import pixels_to_pil

        candidates = [node] if node else list(reversed(self.plan.order))
        for node_id in candidates:
            for value in self.outputs.get(node_id, {}).values():
                if isinstance(value, Images):
                    return pixels_to_pil(value.pixels)
        return []


# Free-text config keys: a comma or a bracket in them is text (A1111 weights: "a (red:1.2) circle").
TEXT_KEYS = ("prompt", "negative_prompt", "safety_concept")
_SWEEP_FUNCTIONS = ("choice(", "range(", "interval(", "glob(", "sort(", "shuffle(", "tag(")


def quote_text_values(overrides: list[str]) -> list[str]:
    """Quote single-run override values that Hydra's grammar would misread, so ``prompt=a cat, blue`` is text.

    Hydra reads an unquoted comma as a sweep and refuses it outside ``-m``; in a single run a comma can
    only be text. A text key's brackets are prompt weighting (``prompt=a (red:1.2) circle``). Lists
    (``seed=[1,2]``), sweep functions and values the user already quoted are left alone.
    """
    quoted = []
    for override in overrides:
        key, sep, value = override.partition("=")
        plain = sep and value[:1] not in ("[", "{", "'", '"') and not value.startswith(_SWEEP_FUNCTIONS)
        weighted = key.lstrip("+~") in TEXT_KEYS and any(c in value for c in "()[]")
        if plain and (weighted or ("," in value and "(" not in value)):
            quote = "'" if '"' in value else '"'
            override = f"{key}={quote}{value}{quote}"
        quoted.append(override)
    return quoted


def check_command_line(overrides: list[str]) -> None:
    """Command-line values follow the workflow files' rules: no resolver may reach the environment or run code.

    (``prompt='${oc.env:AWS_SECRET}'`` would otherwise be resolved and written into PNGs and logs.)
    Hydra's own settings (``hydra.*``) may use Hydra's resolvers, e.g. ``${now:...}`` in a run folder.
    """
    problems = []
    for override in overrides:
        key, sep, value = override.partition("=")
        resolver = resolver_in(value) if sep else None
        if resolver and not key.lstrip("+~").startswith("hydra"):
            problems.append(Problem("command line", None, key.lstrip("+~"), f"'{resolver}': {NO_RESOLVERS}"))
    if problems:
        raise ValidationError(problems)


def output_folder_problem(folder: str, key: str) -> Problem | None:
    """Whether a run could create ``folder`` (its nearest existing parent writable), asked before anything runs.

    ``folder`` may still hold interpolations (``outputs/${now:...}``): the part before the first one counts.
    """
    import os

    literal = folder.split("${", 1)[0] or "."
    target = Path(literal).expanduser().absolute()
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.is_dir() and os.access(probe, os.W_OK | os.X_OK):
        return None
    what = "is not a folder" if probe.exists() and not probe.is_dir() else "cannot be written by this user"
    return Problem("command line", None, key, f"images would go under '{target}', but '{probe}' {what}; "
                   f"choose another folder ({key}=...) or run from a folder you can write")


def compose_config(overrides: list[str] | None = None, config_dirs: list[str] = ()) -> DictConfig:
    """The Hydra config for ``overrides``, composed from sdflow/conf exactly as the CLI would.

    ``config_dirs``: the user's own config folders (the CLI's ``--config-dir``), searched as Hydra does.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    overrides = quote_text_values(list(overrides or []))
    check_command_line(overrides)
    if config_dirs:
        folders = ",".join(f"file://{Path(d).resolve()}" for d in config_dirs)
        overrides = [f"hydra.searchpath=[{folders}]"] + overrides
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=overrides)
    with initialize_config_module(config_module="sdflow.conf", version_base=None):
        return compose(config_name="config", overrides=overrides)


def plan_workflow(config: DictConfig) -> Plan:
    """Parse, interpolate and validate the workflow the config names; raises ValidationError."""
    name = config.get("workflow")
    path = workflow_path(str(name))
    if not path.exists():
        known = ", ".join(available_workflows())
        raise ValidationError([Problem(str(path), None, None, f"workflow '{name}' not found (built-in workflows: {known}; "
                                       "or give a path to a .yaml file)")])
    from .nodes.runtime_facts import check_runtime

    # Every problem at once: the runtime's (a GPU that is not there), the interpolations', the workflow's.
    problems = check_runtime(config.get("runtime") or {})
    workflow = load_workflow(path)
    unresolved = resolve_interpolations(workflow, config)
    if unresolved:  # the workflow's own checks need its values
        raise ValidationError(problems + unresolved)
    try:
        plan = validate(workflow)
    except ValidationError as exc:
        raise ValidationError(problems + exc.problems) from None
    if problems:
        raise ValidationError(problems)
    return plan


def prompt_warnings(config: DictConfig, plan: Plan) -> list[str]:
    """Words a model with a closed vocabulary (the shapes default) has never seen: it cannot draw them.

    Read from the prompts the plan actually encodes, not the config's ``prompt`` (a workflow may set its own).
    """
    model = config.get("model") or {}
    sources = {planned.params.get("source") for planned in plan.nodes.values() if planned.spec.name == "load_model"}
    if model.get("vocabulary") != "shapes" or "builtin:shapes" not in sources:
        return []
    from .world.vocabulary import unknown_words, world_words

    texts = []
    for planned in plan.nodes.values():
        for name, value in planned.params.items():
            if "prompt" in name and planned.spec.params[name].type is str:
                texts += value if isinstance(value, list) else [value]
    unknown = list(dict.fromkeys(w for text in texts if isinstance(text, str) for w in unknown_words(text)))
    if not unknown:
        return []
    return [f"the '{model.get('path')}' model cannot draw {', '.join(repr(w) for w in unknown)}: it only knows "
            f"{', '.join(world_words())} (use model=sd15 or model.path=... for open prompts)"]


saved_paths: list[Path] = []  # every image this process wrote, for the Ctrl-C report
_warned: set[str] = set()  # a warning is logged once per process: once per run or per sweep


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


def runtime_compile(runtime) -> bool | str:
    """``runtime.compile``: false, true, or a torch.compile mode ("reduce-overhead": CUDA graphs; "max-autotune")."""
    value = runtime.get("compile", False)
    if value in (None, False, "false", "False"):
        return False
    return True if value in (True, "true", "True", "default") else str(value)


def run_plan(plan: Plan, config: DictConfig, output_dir: str | Path | None, cache: ComponentCache | None = None,
             progress: bool = True, warn: bool = True, on_preview: Callable | None = None) -> RunResult:
    """Execute a validated plan; images go to ``output_dir``. ``warn=False``: record warnings, log none.

    ``on_preview``: called after every denoise step with a ``sdflow.ui.previews.StepPreview`` (its image every
    ``preview_every`` steps); without it, ``preview_every > 0`` writes previews into ``output_dir/previews``.
    """
    runtime = config.get("runtime") or {}
    ctx = RunContext(
        cache=cache if cache is not None else process_cache(),
        device=str(runtime.get("device", "cpu")),
        dtype=str(runtime.get("dtype", "float32")),
        output_dir=Path(output_dir) if output_dir is not None else None,
        progress=progress,
        workflow_file=plan.workflow.path,
        compile=runtime_compile(runtime),
    )
    if config.get("preview_every") or on_preview is not None:
        from .ui.previews import step_callback

        ctx.on_step = step_callback(plan, ctx, config, on_preview)
    ctx.record.update({
        "workflow_file": plan.workflow.path,
        "workflow_yaml": resolved_workflow_yaml(plan),
        "versions": versions(),
        "runtime": {"device": ctx.device, "dtype": ctx.dtype},
    })
    for warning in prompt_warnings(config, plan):
        if warn and warning not in _warned:
            log.warning(warning)
            _warned.add(warning)
        ctx.record.setdefault("warnings", []).append(warning)
    configure_threads(runtime, plan_weight_bytes(plan))
    # The run folder's manifest.json says how the run went; a fused sweep's batch (no folder) keeps none.
    manifest = (run_manifest(ctx.output_dir, workflow=plan.workflow.path, record=ctx.record)
                if ctx.output_dir is not None else contextlib.nullcontext())
    try:
        with manifest:
            outputs = execute(plan, ctx)
    finally:  # also when a later node fails or Ctrl-C arrives: what was written is said
        saved_paths.extend(Path(p) for p in ctx.record.get("saved", []))
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
