"""The extras (pyproject): the core imports no web stack nor cluster library, and a door whose extra is missing says
in one line which pip command adds it. A missing module is simulated in a subprocess: a sitecustomize that puts
None in sys.modules for it (Python's own way of making an import fail with ModuleNotFoundError)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB, CLUSTER = ("gradio", "fastapi", "uvicorn"), ("ray", "submitit")
BLOCKER = "import os, sys\nfor name in os.environ['SDFLOW_TEST_BLOCK'].split(','):\n    sys.modules[name] = None\n"


def without(modules, tmp_path, *command, cwd=None):
    """``command`` run by this Python with ``modules`` not importable."""
    (tmp_path / "blocker").mkdir(exist_ok=True)
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "SDFLOW_TEST_BLOCK": ",".join(modules),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "blocker"), str(ROOT)])}
    return subprocess.run([sys.executable, *command], cwd=cwd or tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_core_imports_no_web_stack_and_no_cluster_library(tmp_path):
    # Every module of sdflow and its Hydra plugin imported with the extras' modules missing: only the three that are
    # the extras' own doors fail, and by the module of their extra.
    walk = ("import importlib, pkgutil, sdflow, hydra_plugins.sdflow_launcher as launcher\n"
            "for package in (sdflow, launcher):\n"
            "    for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
            "        if info.name.endswith('__main__'):\n"
            "            continue\n"
            "        try:\n"
            "            importlib.import_module(info.name)\n"
            "        except ImportError as exc:\n"
            "            print(info.name, exc.name)\n")
    run = without(WEB + CLUSTER, tmp_path, "-c", walk)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(run.stdout.split("\n")[:-1]) == [
        "sdflow.run.remote.slurm_pool submitit", "sdflow.ui.app gradio", "sdflow.ui.http fastapi"]


@pytest.mark.parametrize("missing", WEB)
def test_sdflow_ui_without_the_ui_extra_names_the_pip_command(tmp_path, missing):
    # The entry point pyproject declares (not the one an older editable install wrote into .venv/bin).
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["sdflow-ui"]
    module, function = target.split(":")
    run = without([missing], tmp_path, "-c", f"import sys; sys.argv = ['sdflow-ui']; "
                  f"from {module} import {function}; {function}()")
    assert run.returncode == 1
    assert run.stderr == f"sdflow-ui needs the ui extra ({missing} is not installed): pip install 'sdflow[ui]'\n"
    assert run.stdout == ""


@pytest.mark.parametrize("launcher, missing", [("sdflow_ray", "ray"), ("sdflow_slurm", "submitit")])
def test_a_cluster_launcher_without_the_cluster_extra_names_the_pip_command(tmp_path, launcher, missing):
    # Refused as a command line that cannot run (exit status 2), before the sweep is planned: no file written. (The
    # Slurm launcher's config names a folder in the sweep folder, which Hydra claims as it reads it, empty.)
    run = without([missing], tmp_path, "-m", "sdflow.cli", "-m", f"hydra/launcher={launcher}", "seed=1,2",
                  "model=tiny")
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr == (f"sdflow: hydra/launcher={launcher} needs the cluster extra ({missing} is not installed): "
                          "pip install 'sdflow[cluster]'\n")
    assert [p for p in tmp_path.rglob("*") if p.is_file() and p.parent.name != "blocker"] == []


def test_the_doors_check_the_modules_of_their_extra():
    # A door checks its extra's packages (their import names are their names): a dependency renamed or moved between
    # extras fails here, not for a user.
    from packaging.requirements import Requirement

    from hydra_plugins.sdflow_launcher.remote import RayLauncher, SlurmLauncher
    from sdflow.ui import WEB_STACK

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {extra: {Requirement(r).name for r in requirements}
              for extra, requirements in project["optional-dependencies"].items()}
    assert extras["ui"] == set(WEB_STACK) == set(WEB)
    assert extras["cluster"] == set(RayLauncher.needs + SlurmLauncher.needs) == set(CLUSTER)
    assert not {Requirement(r).name for r in project["dependencies"]} & (extras["ui"] | extras["cluster"])
    assert "sdflow[cluster,ui]" in {str(Requirement(r)) for r in project["optional-dependencies"]["test"]}
