"""CPU threads per run (small models: one thread; runtime.threads overrides) and the third-party notices hidden."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from sdflow import runtime_env
from sdflow.api import compose_config, plan_workflow, run_workflow
from sdflow.engine import ValidationError
from sdflow.runtime_env import SMALL_MODEL_BYTES, choose_threads, configure_threads, plan_weight_bytes


@pytest.fixture
def automatic(monkeypatch):
    """As a user's process: no OMP_NUM_THREADS, torch's default unknown until the first run; restored after."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime_env, "_torch_default_threads", None)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_small_models_on_the_cpu_get_one_thread_and_big_ones_keep_torchs_choice(automatic):
    cpu, cuda = {"device": "cpu"}, {"device": "cuda"}
    assert choose_threads(cpu, 8 * 2**20) == 1
    assert choose_threads(cpu, 4 * 2**30) is None
    assert choose_threads(cpu, None) is None  # a hub model not downloaded yet: not known to be small
    assert choose_threads(cuda, 8 * 2**20) is None
    assert choose_threads({**cpu, "threads": 3}, 8 * 2**20) == 3
    assert choose_threads({**cuda, "threads": 2}, None) == 2


def test_omp_num_threads_from_the_user_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads({"device": "cpu"}, 8 * 2**20) is None


@pytest.mark.parametrize("threads", [0, -1, "two", 1.5, True])
def test_a_bad_thread_count_is_a_config_problem(threads):
    with pytest.raises(ValidationError, match="runtime.threads"):
        choose_threads({"device": "cpu", "threads": threads}, None)


def test_threads_are_set_only_when_the_count_changes(automatic, monkeypatch):
    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    real(2)
    assert configure_threads({"device": "cpu"}, 1000) == 1
    assert configure_threads({"device": "cpu"}, 1000) == 1
    assert configure_threads({"device": "cpu", "threads": 2}, 1000) == 2
    assert configure_threads({"device": "cpu"}, SMALL_MODEL_BYTES) == 2  # torch's own choice, read first
    assert calls == [1, 2]


def test_the_default_model_counts_as_small():
    from sdflow.models.sources import PACKAGED

    plan = plan_workflow(compose_config(["workflow=chain"]))  # shapes twice (text2img, img2img) and shapes-x4
    on_disk = sum(p.stat().st_size for name in ("shapes", "shapes-x4")
                  for p in (PACKAGED / name).rglob("*.safetensors"))
    assert plan_weight_bytes(plan) == on_disk
    assert 2 * 2**20 < on_disk < SMALL_MODEL_BYTES


def test_a_single_file_checkpoint_counts_its_file(tiny_sd, tmp_path):
    from original_layout import configs_only, write_original_checkpoint

    path = write_original_checkpoint(tiny_sd, tmp_path / "tiny.safetensors", "sd15")
    configs = configs_only(tiny_sd, tmp_path / "configs")
    plan = plan_workflow(compose_config(["model=tiny", f"model.path={path}", f"model_config={configs}"]))
    assert plan_weight_bytes(plan) == path.stat().st_size


def test_a_run_uses_the_configured_threads(tiny_sd, tmp_path, automatic):
    run_workflow("text2img", ["model=tiny", "steps=1", "runtime.threads=2"], output_dir=tmp_path)
    assert torch.get_num_threads() == 2
    run_workflow("text2img", ["model=tiny", "steps=1"], output_dir=tmp_path)
    assert torch.get_num_threads() == 1


def test_quiet_third_party_drops_only_the_named_notices():
    runtime_env.quiet_third_party()
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    logger = logging.getLogger("transformers.utils.import_utils")
    logger.addHandler(handler)
    try:
        logger.warning("`CLIPImageProcessor` requires torchvision (not installed); falling back to `...Pil`")
        logger.warning("a real problem")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in seen] == ["a real problem"]


NOTICES = ["requires torchvision", "StableDiffusionLDM3DPipeline has been deprecated", "Loading weights",
           "Writing model shards"]
RUN = ("import sys\n"
       "if sys.argv[1] == 'quiet':\n"
       "    from sdflow.runtime_env import quiet_third_party; quiet_third_party()\n"
       "from sdflow.api import run_workflow\n"
       "run_workflow('ldm3d', ['model=tiny_ldm3d', 'steps=1'], output_dir=sys.argv[2])\n")


@pytest.mark.parametrize("mode", ["loud", "quiet"])
def test_a_first_ldm3d_run_on_its_tiny_model_prints_no_third_party_notice(tmp_path, mode):
    # "loud" shows the notices are really there (so the quiet run is not blind to a changed wording).
    env = {**os.environ, "SDFLOW_HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", RUN, mode, str(tmp_path / "out")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    shown = [notice for notice in NOTICES if notice in run.stderr]
    assert shown == (NOTICES if mode == "loud" else []), run.stderr[-3000:]
