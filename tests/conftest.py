"""Shared fixtures: the tiny models (built once per test session, fixed seeds, real on-disk formats).

A session writes only under pytest's own temp folder (the last 3 sessions' are kept): the built-in models
(SDFLOW_HOME), and every folder code makes with the tempfile module, sdflow's CLI subprocesses included.
A session that leaves a new ``sdflow-*`` entry in the system temp folder fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

# Tiny models run fastest on one thread, and a busy core makes a second one spin (see sdflow/runtime_env.py);
# set before torch loads, and inherited by the CLI subprocesses tests start.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
SYSTEM_TMP = Path(tempfile.gettempdir())
_tmp_before: set[str] = set()
_tmp_leftovers: list[str] = []


def _sdflow_temp_entries() -> set[str]:
    return {p.name for p in SYSTEM_TMP.glob("sdflow-*")}


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_sessionstart(session):
    _tmp_before.update(_sdflow_temp_entries())


@pytest.fixture(scope="session", autouse=True)
def session_folders(tmp_path_factory):
    """Built-in models and every temporary folder of the session go under pytest's basetemp."""
    home = tmp_path_factory.mktemp("sdflow-home", numbered=False)
    scratch = tmp_path_factory.mktemp("tmp", numbered=False)
    # Ray keeps its Unix sockets in its temp folder, whose paths hold at most 107 bytes: pytest's run deeper
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    saved = {key: os.environ.get(key) for key in ("SDFLOW_HOME", "TMPDIR", "RAY_TMPDIR", "TORCHINDUCTOR_CACHE_DIR")}
    os.environ.update(SDFLOW_HOME=str(home), TMPDIR=str(scratch), RAY_TMPDIR=ray_tmp,
                      TORCHINDUCTOR_CACHE_DIR=str(scratch / "inductor"))  # (else /tmp/torchinductor_USER, kept)
    tempfile.tempdir = str(scratch)
    yield home
    tempfile.tempdir = None
    shutil.rmtree(ray_tmp, ignore_errors=True)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def pytest_sessionfinish(session, exitstatus):
    leftovers = _sdflow_temp_entries() - _tmp_before
    if leftovers:  # another process's TemporaryDirectory on a shared machine is gone a moment later
        time.sleep(1)
        leftovers = sorted(leftovers & _sdflow_temp_entries())
    if leftovers:
        _tmp_leftovers.extend(leftovers)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _tmp_leftovers:
        terminalreporter.write_line(f"FAILED: the session left {len(_tmp_leftovers)} new entries in {SYSTEM_TMP}: "
                                    f"{', '.join(_tmp_leftovers)} (tests must write under tmp_path)", red=True)


@pytest.fixture(autouse=True)
def fresh_output_cache():
    """Each test starts with an empty output cache: a node reused from another test would not run its own code."""
    from sdflow.engine import process_output_cache

    process_output_cache().clear()


@pytest.fixture(scope="session")
def tiny_sd():
    from sdflow.models.builtin import builtin_model

    return builtin_model("tiny")


@pytest.fixture
def overflowing_vae_model(tiny_sd, tmp_path):
    """A copy of the tiny model whose VAE overflows in float16: its decoder's first conv past float16's largest
    value (65504) gives inf, then NaN from the group norm, which in float32 just takes the constant away."""
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(tiny_sd, tmp_path / "overflowing_vae")
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["decoder.conv_in.bias"] = torch.full_like(tensors["decoder.conv_in.bias"], 65000.0)
    save_file(tensors, weights)
    return folder


@pytest.fixture(scope="session")
def tiny_upscaler():
    from sdflow.models.builtin import builtin_model

    return builtin_model("tiny-x4")


@pytest.fixture
def fresh_cache():
    from sdflow.engine import ComponentCache

    return ComponentCache()
