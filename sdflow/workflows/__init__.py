"""The built-in workflows (the YAML files beside this module) and how a workflow name finds its file."""

from __future__ import annotations

import os
from pathlib import Path

WORKFLOWS_DIR = Path(__file__).resolve().parent


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
