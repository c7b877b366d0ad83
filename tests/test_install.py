"""The first hour: a wheel install works from any folder, and the README's examples say what sdflow does.

Config, workflows and the default model ship inside the package. The wheel is built offline from a copy
of the sources and installed without its dependencies into a fresh venv that borrows this environment's
(a full dependency install takes minutes and, on Linux, a CUDA torch of several GB; measured: 85 s and
5.8 GB against 10 s here). What is tested is the package itself: its files, its entry points, and a run
that cannot see the source tree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", "build", "dist", "*.egg-info", "outputs", "multirun",
                              ".pytest_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source") / "sdflow"
    shutil.copytree(ROOT, source, ignore=SKIP)
    dist = source.parent / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
                    "--wheel-dir", str(dist), str(source)], check=True, capture_output=True, text=True)
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


@pytest.mark.slow
def test_the_installed_wheel_draws_the_readme_prompt_from_another_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # This environment's packages as the new venv's dependencies; a .pth path line adds the folder only
    # (its own .pth files, the editable sdflow's among them, are not run), so sdflow comes from the wheel.
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, text=True)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    env.pop("PYTHONPATH", None)
    run = subprocess.run([str(venv / "bin" / "sdflow"), "prompt=a small red circle on the left, blue background",
                          "seed=0"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (png,) = elsewhere.glob("outputs/*/*/text2img_000_seed0.png")
    from PIL import Image

    assert Image.open(png).size == (64, 64)
    where = subprocess.run([str(python), "-c", "import sdflow; print(sdflow.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv)), where


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
