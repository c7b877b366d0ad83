"""The first hour: sdflow installs from its wheel with its dependencies, from any folder, and the README's examples
say what sdflow does.

The wheel is built offline from a copy of the sources. The install test makes a fresh venv and pip-installs the
wheel's core (no extra) with its dependencies resolved for real from the configured index, constraints.txt applied,
as scripts/install.sh does once torch is in: torch is this environment's (its files linked into the venv: pip finds
it installed and holds it to pyproject and the pins; a torch from the index would be the multi-GB CUDA build on a
plain one, and install.sh's choice of build is tests/test_install_script.py's). ``--no-compile``: pip's bytecode
step was 50 of the install's 70 s here (measured), and Python compiles at first import anyway. Then the README's
command runs from another folder, and the extras' doors say what to install. Another resolution, not installed
(``--dry-run``), checks that constraints.txt pins all that sdflow[test] installs and nothing else.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import distributions
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from test_install_constraints import pins

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", "build", "dist", "*.egg-info", "outputs", "multirun",
                              ".pytest_cache")
TORCH_CUDA_RUNTIME = re.compile(r"nvidia-.*|triton|cuda-.*")  # what only a CUDA torch brings (torch pins it itself)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source") / "sdflow"
    shutil.copytree(ROOT, source, ignore=SKIP)
    dist = source.parent / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
                    "--wheel-dir", str(dist), str(source)], check=True, capture_output=True, text=True)
    assert not (source / "build").exists()  # the build backend builds in a temporary folder (scripts/build_backend.py)
    (found,) = dist.glob("sdflow-*.whl")
    return found


@pytest.mark.slow
def test_the_wheel_holds_every_file_of_the_package_tree(wheel):
    # Config, workflows, the default models, model configs, UI assets: whatever lies in the package folders
    # is read at run time by path, so a file missing from package-data only fails after a wheel install.
    names = set(zipfile.ZipFile(wheel).namelist())
    tree = sorted(p.relative_to(ROOT).as_posix() for top in ("sdflow", "hydra_plugins") for p in (ROOT / top).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)
    for expected in ("sdflow/conf/config.yaml", "sdflow/conf/runtime/cpu.yaml", "sdflow/workflows/text2img.yaml",
                     "sdflow/models/shapes/unet/diffusion_pytorch_model.safetensors",
                     "sdflow/models/shapes-x4/unet/diffusion_pytorch_model.safetensors"):
        assert expected in tree
    missing = [name for name in tree if name not in names]
    assert not missing, f"the wheel lacks {len(missing)} files of the package tree: {missing[:10]}"


def fresh_venv(folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    return folder / "bin" / "python"


def pip_into(python: Path, *args: str, report: Path) -> dict:
    """This environment's pip installing into ``python``'s venv from the configured index; pip's JSON report."""
    run = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                          "--disable-pip-version-check", "--constraint", str(ROOT / "constraints.txt"),
                          "--report", str(report), *args], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(report.read_text())


def lend_torch(python: Path, folder: Path) -> None:
    """This environment's torch (and a CUDA build's runtime) seen installed by ``python``: its files linked into
    ``folder``, which a .pth line puts on the venv's path."""
    folder.mkdir()
    for dist in distributions():
        if dist.metadata["Name"] == "torch" or TORCH_CUDA_RUNTIME.fullmatch(canonicalize_name(dist.metadata["Name"])):
            for top in {f.parts[0] for f in dist.files if not f.parts[0].startswith("..")}:
                if not (folder / top).exists():
                    (folder / top).symlink_to(Path(dist.locate_file(top)))
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "lent_torch.pth").write_text(f"{folder}\n")


def installed(report: dict) -> dict[str, str]:
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}


@pytest.mark.slow
def test_the_core_installs_from_the_index_and_draws_the_readme_prompt_from_another_folder(wheel, tmp_path):
    python = fresh_venv(tmp_path / "venv")
    lend_torch(python, tmp_path / "lent")
    got = installed(pip_into(python, "--no-compile", str(wheel), report=tmp_path / "report.json"))

    # The core's dependencies, at the pinned versions; no web stack, no cluster library; torch kept, not fetched.
    pinned = pins()
    assert "diffusers" in got and "peft" in got and "torch" not in got
    assert {name: version for name, version in got.items() if name != "sdflow"} == {
        name: str(pinned[name]) for name in got if name != "sdflow"}
    assert not {"gradio", "fastapi", "uvicorn", "ray", "submitit"} & set(got)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SDFLOW_DEBUG")}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = shlex.split(re.search(r"bash scripts/install\.sh && \.venv/bin/(sdflow .*)", readme).group(1))
    run = subprocess.run([str(python.parent / command[0]), *command[1:]], cwd=elsewhere, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (png,) = elsewhere.glob("outputs/*/*/text2img_000_seed0.png")
    from PIL import Image

    assert Image.open(png).size == (64, 64)
    where = subprocess.run([str(python), "-c", "import sdflow; print(sdflow.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(tmp_path / "venv")), where

    # The extras' doors, with the modules really missing.
    ui = subprocess.run([str(python.parent / "sdflow-ui")], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert (ui.returncode, ui.stderr) == (1, "sdflow-ui needs the ui extra (gradio is not installed): "
                                             "pip install 'sdflow[ui]'\n")
    ray = subprocess.run([str(python.parent / "sdflow"), "-m", "hydra/launcher=sdflow_ray", "seed=1,2"], cwd=elsewhere,
                         env=env, capture_output=True, text=True, timeout=300)
    assert (ray.returncode, ray.stderr) == (2, "sdflow: hydra/launcher=sdflow_ray needs the cluster extra (ray is not "
                                               "installed): pip install 'sdflow[cluster]'\n")


@pytest.mark.slow
def test_the_constraints_pin_all_that_sdflow_test_installs_and_nothing_else(wheel, tmp_path):
    python = fresh_venv(tmp_path / "venv")
    got = installed(pip_into(python, "--dry-run", "--ignore-installed", f"{wheel}[test]",
                             report=tmp_path / "report.json"))
    got = {name: version for name, version in got.items()
           if name != "sdflow" and not TORCH_CUDA_RUNTIME.fullmatch(name)}
    pinned = pins()
    assert sorted(set(got) - set(pinned)) == [], "installed but not pinned in constraints.txt"
    assert sorted(set(pinned) - set(got)) == [], "pinned in constraints.txt but not installed by sdflow[test]"
    assert {name: version.split("+")[0] for name, version in got.items()} == {
        name: str(version) for name, version in pinned.items()}


def test_the_readme_example_of_an_invalid_workflow_is_what_sdflow_reports(tmp_path):
    from sdflow.api import compose_config, plan_workflow
    from sdflow.engine import ValidationError

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    workflow = re.search(r"```yaml\n(description: Text to image.*?)```", readme, re.S).group(1)
    slips = [("tokenizer: model.tokenizer", "tokenizer: modle.tokenizer"), ("type: denoise\n", "type: denoize\n"),
             ("image: decode.image", "image: noise.latents")]
    for right, wrong in slips:
        assert workflow.count(right) == 1
        workflow = workflow.replace(right, wrong)
    (tmp_path / "my_flow.yaml").write_text(workflow, encoding="utf-8")
    shown = re.search(r"\$ sdflow workflow=\./my_flow\.yaml\n(.*?)\n```", readme, re.S).group(1)
    with pytest.raises(ValidationError) as error:
        plan_workflow(compose_config([f"workflow={tmp_path / 'my_flow.yaml'}"]))
    assert f"sdflow: {error.value}".replace(f"{tmp_path}{os.sep}", "") == shown
