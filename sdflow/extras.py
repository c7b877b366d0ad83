"""sdflow's optional parts (pyproject's extras) and the one line that says how to install a missing one.

The core (engine, CLI, sweeps, community models) imports none of them: ``sdflow[ui]`` adds the web UI and HTTP API
(gradio, FastAPI, uvicorn), ``sdflow[cluster]`` the Ray and Slurm launchers (ray, submitit).
"""

from __future__ import annotations

import importlib
import importlib.util


def missing_extra(extra: str, modules: tuple[str, ...], needed_by: str) -> str | None:
    """None when ``modules`` import (they are imported), else what to run: ``"NEEDED_BY needs the EXTRA extra
    (MODULE is not installed): pip install 'sdflow[EXTRA]'"``, MODULE the first not found, or one of theirs that is
    missing (installing the extra brings it back). Any other import failure is raised as it is."""
    message = "{} needs the {} extra ({} is not installed): pip install 'sdflow[{}]'"
    for module in modules:  # looked for first: nothing imported for a message
        if importlib.util.find_spec(module) is None:
            return message.format(needed_by, extra, module, extra)
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            return message.format(needed_by, extra, exc.name or module, extra)
    return None
