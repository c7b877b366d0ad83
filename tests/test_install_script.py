"""scripts/install.sh chooses the torch build: CUDA where nvidia-smi lists a GPU, else the CPU build asked for by its
build tag (torch==VERSION+cpu), from PyTorch's CPU index or, where that cannot be reached, from the configured index;
where neither has it, a message that says what to do, and no torch. pip is a recorder here (SDFLOW_PIP) that logs
its arguments and installs nothing; nvidia-smi a script on PATH; PyTorch's CPU index a local HTTP server."""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH = next(line.split("==")[1] for line in (ROOT / "constraints.txt").read_text().splitlines()
             if line.startswith("torch=="))

FAKE_PIP = """#!/bin/sh
echo "$*" >> "$PIP_LOG"
case "$*" in *"$PIP_FAILS"*) [ -n "$PIP_FAILS" ] && exit 1;; esac
exit 0
"""


@pytest.fixture(scope="module")
def cpu_index(tmp_path_factory):
    """The URL of an index that answers for torch (the script only checks that it answers)."""
    folder = tmp_path_factory.mktemp("cpu-index")
    (folder / "torch").mkdir()
    (folder / "torch" / "index.html").write_text("<html></html>")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A venv without torch, made once (install.sh makes one only where none is)."""
    venv = tmp_path_factory.mktemp("install") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return venv


def install(tmp_path, venv, cpu_index, *, gpu: bool, pip_fails: str = "", extras=None):
    """Run install.sh; (its result, the pip command lines it ran)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pip").write_text(FAKE_PIP)
    # Without a GPU, an nvidia-smi that fails as it does where no driver answers (and hides a real one).
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n" if gpu else
                                        "#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2; exit 9\n")
    for tool in ("pip", "nvidia-smi"):
        (bin_dir / tool).chmod(0o755)
    log = tmp_path / "pip.log"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SDFLOW_VENV": str(venv),
           "SDFLOW_PIP": str(bin_dir / "pip"), "PIP_LOG": str(log), "PIP_FAILS": pip_fails,
           "SDFLOW_TORCH_CPU_INDEX": cpu_index}
    if extras is not None:
        env["SDFLOW_EXTRAS"] = extras
    run = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh")], env=env, capture_output=True, text=True,
                         timeout=120)
    calls = [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []
    return run, calls


def torch_installs(calls):
    return [call for call in calls if "install" in call and any(a.startswith("torch==") for a in call)]


def test_with_a_gpu_the_cuda_build_from_the_configured_index(tmp_path, venv, cpu_index):
    run, calls = install(tmp_path, venv, cpu_index, gpu=True)
    assert run.returncode == 0, run.stderr
    (torch,) = torch_installs(calls)
    assert f"torch=={TORCH}" in torch and "--index-url" not in torch  # no build tag: the index's default (CUDA) build
    assert "installing the CUDA build" in run.stdout
    # what it installed is checked: here (the recorder installed nothing) no CUDA torch, said with what to do
    assert "without CUDA" in run.stderr and "download.pytorch.org/whl/cu" in run.stderr


def test_without_a_gpu_the_cpu_build_from_pytorchs_cpu_index(tmp_path, venv, cpu_index):
    run, calls = install(tmp_path, venv, cpu_index, gpu=False)
    assert run.returncode == 0, run.stderr
    (torch,) = torch_installs(calls)
    assert f"torch=={TORCH}+cpu" in torch
    assert torch[torch.index("--index-url") + 1] == cpu_index
    assert "--extra-index-url" in torch  # torch's own dependencies from the configured index


def test_without_a_gpu_nor_the_cpu_index_the_cpu_build_from_the_configured_index(tmp_path, venv):
    run, calls = install(tmp_path, venv, UNREACHABLE, gpu=False)
    assert run.returncode == 0, run.stderr
    (torch,) = torch_installs(calls)
    assert f"torch=={TORCH}+cpu" in torch and "--index-url" not in torch  # never the bare version: a CUDA build
    assert "cannot be reached" in run.stdout


def test_where_no_cpu_build_can_be_found_it_stops_and_says_what_to_do(tmp_path, venv):
    run, calls = install(tmp_path, venv, UNREACHABLE, gpu=False, pip_fails=f"torch=={TORCH}+cpu")
    assert run.returncode == 1
    (torch,) = torch_installs(calls)
    assert f"torch=={TORCH}+cpu" in torch
    assert "no CPU build of torch" in run.stderr and "SDFLOW_TORCH_CPU_INDEX" in run.stderr
    assert "PIP_FIND_LINKS" in run.stderr
    assert not any("-e" in call for call in calls)  # sdflow not installed without a torch


@pytest.mark.parametrize("extras, target", [(None, ".[test]"), ("", "."), ("ui", ".[ui]")])
def test_sdflow_and_torch_are_installed_with_the_constraints(tmp_path, venv, cpu_index, extras, target):
    run, calls = install(tmp_path, venv, cpu_index, gpu=False, extras=extras)
    assert run.returncode == 0, run.stderr
    (sdflow,) = [call for call in calls if "-e" in call]
    assert sdflow[sdflow.index("-e") + 1] == target
    for call in (sdflow, *torch_installs(calls)):
        assert call[call.index("--constraint") + 1] == "constraints.txt"
