"""sdflow from Python: the run layer's functions under the names scripts and notebooks use.

    from sdflow.api import run_workflow
    result = run_workflow("text2img", ["prompt=a red circle", "seed=3"], output_dir="out")
    result.saved, result.record.of(Seeds), result.images()

``compose_config`` and ``plan_workflow`` give the config and validated plan the command would run, and
``run_plan`` runs one: exactly the path every door takes (sdflow.run).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from .engine import Plan, Workflow
from .run import RunResult, compose_config, run, run_workflow
from .run import plan as _plan

__all__ = ["RunResult", "compose_config", "plan_workflow", "run_plan", "run_workflow"]


def plan_workflow(config: DictConfig, workflow: Workflow | str | Path | None = None) -> Plan:
    """The validated plan of ``workflow`` (default: the one the config names) with ``config``; raises ValidationError."""
    return _plan(workflow, config)


run_plan = run  # run_plan(plan, config, output_dir, cache=..., progress=..., on_preview=...) -> RunResult
