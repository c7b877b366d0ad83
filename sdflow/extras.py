"""sdflow's optional parts (pyproject's extras) and the one line that says how to install a missing one.

The core (engine, CLI, sweeps, community models) imports none of them: ``sdflow[ui]`` adds the web UI and HTTP API
(gradio, FastAPI, uvicorn), ``sdflow[cluster]`` the Ray and Slurm launchers (ray, submitit).
"""

from __future__ import annotations

import importlib


def missing_extra(extra: str, modules: tuple[str, ...], needed_by: str) -> str | None:
    """None when ``modules`` import (they are imported), else what to run: ``"NEEDED_BY needs the EXTRA extra
    (MODULE is not installed): pip install 'sdflow[EXTRA]'"``, MODULE the one not found (it may be one of theirs:
    installing the extra brings it back). Any other import failure is raised as it is."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            missing = exc.name or module
            return f"{needed_by} needs the {extra} extra ({missing} is not installed): pip install 'sdflow[{extra}]'"
    return None
