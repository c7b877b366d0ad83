"""The output cache: a node whose type, parameters, inputs and files are those of an earlier run is not run again.

Same pixels with it and without (image for image, bit for bit), reuse said in the manifest, a changed value or
file recomputes everything below it and nothing above, random state handed on as it was, the byte bound kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from sdflow.api import run_workflow
from sdflow.engine import process_output_cache
from sdflow.run.manifest import read_manifest

CHAIN = ["model=tiny", "steps=4", "upscale_steps=2", "scheduler=euler_a", "seed=5"]
TEXT2IMG = ["model=tiny", "steps=2"]
OFF = "runtime.output_cache=false"


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_a_chain_sweep_over_strength_reuses_its_first_stage_with_the_same_pixels(tmp_path):
    """euler_a draws from each image's generator at every step and img2img continues it: the reused draft's
    generators must come back as they were when the draft was made."""
    strengths = (0.5, 0.7, 0.9)
    cached = [run_workflow("chain", CHAIN + [f"strength={s}"], output_dir=tmp_path / f"on{s}") for s in strengths]
    plain = [run_workflow("chain", CHAIN + [f"strength={s}", OFF], output_dir=tmp_path / f"off{s}") for s in strengths]
    for ours, theirs in zip(cached, plain):
        assert [p.name for p in ours.saved] == [p.name for p in theirs.saved]
        for a, b in zip(ours.saved, theirs.saved):
            assert np.array_equal(pixels(a), pixels(b)), a.name
    assert cached[0].record.reused == [] and plain[1].record.reused == []
    first_stage = {"noise", "prompt", "sampler", "draft", "draft_image", "draft_safety"}
    for later in cached[1:]:
        assert first_stage <= set(later.record.reused)
        assert not {"refine", "refined", "upscale"} & set(later.record.reused)  # below the changed strength
    assert {p.name: pixels(p).tobytes() for p in cached[1].saved} != {p.name: pixels(p).tobytes() for p in cached[2].saved}
    manifest = read_manifest(tmp_path / "on0.7")
    assert manifest["reused"] == cached[1].record.reused
    with Image.open(cached[1].saved[0]) as image:
        assert "reused" not in json.loads(image.text["sdflow"])  # how a run went, not what the image is


def test_a_changed_value_recomputes_what_lies_below_it_and_nothing_above(tmp_path):
    run_workflow("text2img", TEXT2IMG + ["seed=1", "prompt=a red circle"], output_dir=tmp_path / "a")
    new_seed = run_workflow("text2img", TEXT2IMG + ["seed=2", "prompt=a red circle"], output_dir=tmp_path / "b")
    # the prompt's embeddings and the scheduler are reused; the noise and all below it are new
    assert set(new_seed.record.reused) == {"sampler", "prompt"}
    new_prompt = run_workflow("text2img", TEXT2IMG + ["seed=2", "prompt=a blue square"], output_dir=tmp_path / "c")
    assert set(new_prompt.record.reused) == {"sampler", "noise"}  # the prompt and all below it are new
    again = run_workflow("text2img", TEXT2IMG + ["seed=2", "prompt=a blue square"], output_dir=tmp_path / "d")
    assert set(again.record.reused) == {"sampler", "noise", "prompt", "denoise", "decode", "safety"}
    assert np.array_equal(pixels(again.saved[0]), pixels(new_prompt.saved[0]))  # and it still writes its file


def test_a_changed_input_file_is_read_again(tmp_path):
    image = tmp_path / "in.png"
    args = TEXT2IMG + ["steps=3", f"image={image}", "strength=0.7"]
    Image.new("RGB", (64, 64), (200, 30, 30)).save(image)
    red = run_workflow("img2img", args, output_dir=tmp_path / "red")
    time.sleep(0.01)
    Image.new("RGB", (64, 64), (30, 30, 200)).save(image)  # the same name, another picture
    blue = run_workflow("img2img", args, output_dir=tmp_path / "blue")
    assert "image" not in blue.record.reused and "denoise" not in blue.record.reused
    assert not np.array_equal(pixels(red.saved[0]), pixels(blue.saved[0]))
    alone = run_workflow("img2img", args + [OFF], output_dir=tmp_path / "alone")
    assert np.array_equal(pixels(blue.saved[0]), pixels(alone.saved[0]))


def test_the_byte_bound_is_kept_and_evicted_outputs_are_made_again(tmp_path):
    budget_mb = 0.05  # 52 KB: the tiny model's embeddings and latents fit, a few images do not
    args = TEXT2IMG + [f"runtime.output_cache_mb={budget_mb}"]
    runs = [run_workflow("text2img", args + [f"seed=[{s},{s + 1}]"], output_dir=tmp_path / str(s)) for s in range(4)]
    stats = process_output_cache().stats
    assert 0 < stats.bytes_held <= budget_mb * 2**20 and stats.evictions > 0
    again = run_workflow("text2img", args + ["seed=[0,1]"], output_dir=tmp_path / "again")
    assert "noise" not in again.record.reused  # evicted long ago: made again, the same
    assert np.array_equal(pixels(again.saved[0]), pixels(runs[0].saved[0]))


def test_a_sweep_over_a_later_stage_reuses_across_its_jobs_and_says_so(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "sdflow.cli", "-m", "workflow=chain", *CHAIN, "strength=0.4,0.8",
                          "hydra.sweep.dir=out"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    first, second = (read_manifest(tmp_path / "out" / str(n)) for n in range(2))
    assert first["reused"] == [] and {"noise", "draft", "draft_image"} <= set(second["reused"])


@pytest.mark.parametrize("value", ["maybe", "-1"])
def test_output_cache_settings_are_checked_before_anything_runs(tmp_path, value):
    from sdflow.engine import ValidationError

    key = "runtime.output_cache" if value == "maybe" else "runtime.output_cache_mb"
    with pytest.raises(ValidationError, match=key.replace(".", r"\.")):
        run_workflow("text2img", TEXT2IMG + [f"{key}={value}"], output_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_the_web_api_reuses_what_an_earlier_request_made(tmp_path):
    from fastapi.testclient import TestClient

    from sdflow.ui.http import create_api
    from sdflow.ui.jobs import JobQueue
    from sdflow.ui.limits import Folders
    from web_client import wait

    client = TestClient(create_api(JobQueue(Folders(tmp_path / "out", tmp_path / "up"))), base_url="http://127.0.0.1")
    request = {"workflow": "text2img", "values": {"model": "tiny", "steps": 2, "seed": 9}}
    first, second = (wait(client, client.post("/api/jobs", json=request).json()["id"]) for _ in range(2))
    assert first["status"] == second["status"] == "done"
    assert read_manifest(second["output_dir"])["reused"][-1] == "safety"  # every node, to the last before the save
    assert pixels(tmp_path / "out" / first["images"][0]["file"]).tobytes() == \
        pixels(tmp_path / "out" / second["images"][0]["file"]).tobytes()


def test_a_kept_output_that_names_a_cached_model_counts_only_its_own_tensors():
    from dataclasses import dataclass

    import torch

    from sdflow.engine import ComponentCache, OutputCache
    from sdflow.engine.reuse import NodeRun

    @dataclass
    class Condition:  # as a controlnet node's output: the cached ControlNet and its own control image
        model: torch.nn.Module
        image: torch.Tensor

    components = ComponentCache()
    model = components.get("controlnet", lambda: torch.nn.Linear(1000, 1000))  # 4 MB of weights, held there
    condition = Condition(model, torch.zeros(1, 3, 64, 64))
    cache = OutputCache(budget_bytes=None)
    assert cache.put("node", NodeRun({"control": condition}), components)
    assert cache.stats.bytes_held == 3 * 64 * 64 * 4  # the image only
    alone = OutputCache(budget_bytes=None)  # a model no component cache holds is the output's own
    assert alone.put("node", NodeRun({"control": Condition(torch.nn.Linear(1000, 1000), condition.image)}), components)
    assert alone.stats.bytes_held > 4_000_000
