"""Fused sweeps: jobs that differ only in per-image values share batches and give the images of job-by-job runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sdflow.api import compose_config, plan_workflow, run_plan
from sdflow.engine import ComponentCache, NodeRunError
from sdflow.nodes.records import PromptEncoding
from sdflow.run import sweep as sweeps
from sdflow.run.sweep import Job, Sweep

from parity import ONE_LEVEL, TOLERANCE, max_diff


def sdflow(cwd, *args):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "sdflow.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def pngs(folder: Path) -> dict[str, np.ndarray]:
    """Every job image under a sweep folder, keyed by job number and file name."""
    found = {}
    for path in sorted(folder.rglob("*.png")):
        if path.name != "grid.png":
            with Image.open(path) as image:
                found[f"{path.parent.name}/{path.name}"] = np.asarray(image.convert("RGB"), dtype=np.float64) / 255
    return found


def metadata(path: Path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.text["sdflow"])


SWEEP = ["-m", "model=tiny", "steps=2", "seed=0,1,2", "prompt=\"a red circle\",\"a blue, green square\""]


def test_a_fused_sweep_equals_the_basic_launcher_image_for_image(tmp_path):
    (tmp_path / "fused").mkdir()
    (tmp_path / "basic").mkdir()
    fused_run = sdflow(tmp_path / "fused", *SWEEP, "hydra.sweep.dir=out")
    basic_run = sdflow(tmp_path / "basic", *SWEEP, "hydra.sweep.dir=out", "hydra/launcher=basic")
    assert fused_run.returncode == 0, fused_run.stderr
    assert basic_run.returncode == 0, basic_run.stderr
    assert "6 of them fused into 1 batches" in fused_run.stderr + fused_run.stdout
    ours, theirs = pngs(tmp_path / "fused" / "out"), pngs(tmp_path / "basic" / "out")
    assert len(ours) == 6 and sorted(ours) == sorted(theirs)
    for name in ours:  # one batch of 6 here, one image a job there: within one 8-bit level (parity.ONE_LEVEL)
        assert max_diff(ours[name], theirs[name]) <= ONE_LEVEL, name
    distinct = {ours[n].tobytes() for n in ours}
    assert len(distinct) == 6  # seeds and prompts really differ per job
    for job in range(6):
        folder = tmp_path / "fused" / "out" / str(job)
        assert {p.name for p in (folder / ".hydra").iterdir()} == {"config.yaml", "hydra.yaml", "overrides.yaml"}
        (image,) = folder.glob("*.png")
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["status"] == "done" and [Path(i["file"]).name for i in manifest["images"]] == [image.name]
        ours_meta = metadata(image)
        theirs_meta = metadata(tmp_path / "basic" / "out" / str(job) / image.name)
        overrides = (folder / ".hydra" / "overrides.yaml").read_text()
        assert f"seed={ours_meta['image']['seed']}" in overrides
        for key in ("prompt", "negative_prompt"):
            assert ours_meta["prompts"]["prompt"][key] == theirs_meta["prompts"]["prompt"][key]
        assert ours_meta["seeds"] == theirs_meta["seeds"]
        assert ours_meta["image"]["values"] == theirs_meta["image"]["values"]
        assert ours_meta["workflow_yaml"] == theirs_meta["workflow_yaml"]
        assert ours_meta["prompts"]["prompt"]["prompt"] in overrides.replace("\\", "")
    assert (tmp_path / "fused" / "out" / "grid.png").exists()


def test_a_bare_comma_in_a_swept_prompt_is_refused_before_anything_runs(tmp_path):
    run = sdflow(tmp_path, "-m", "model=tiny", "prompt=a small red circle on the left, blue background", "seed=0,1")
    assert run.returncode == 2
    assert "a comma in a swept text value is ambiguous" in run.stderr
    assert 'prompt="a small red circle on the left, blue background"' in run.stderr  # one prompt
    assert 'prompt="a small red circle on the left","blue background"' in run.stderr  # a sweep of two
    assert not (tmp_path / "multirun").exists()


def test_a_quoted_prompt_with_a_comma_stays_one_prompt_in_a_sweep(tmp_path):
    run = sdflow(tmp_path, "-m", "model=tiny", "steps=1", "prompt=\"a small red circle, blue background\"", "seed=0,1")
    assert run.returncode == 0, run.stderr
    images = sorted(p for p in (tmp_path / "multirun").rglob("*.png") if p.name != "grid.png")
    assert len(images) == 2
    assert {metadata(p)["prompts"]["prompt"]["prompt"] for p in images} == {"a small red circle, blue background"}


def jobs_for(overrides_per_job: list[list[str]]) -> list[Job]:
    jobs = []
    for num, overrides in enumerate(overrides_per_job):
        config = compose_config(overrides)
        jobs.append(Job(num, tuple(overrides), config, plan_workflow(config)))
    return jobs


def run_sweep(sweep: Sweep, tmp_path: Path, cache) -> dict[int, object]:
    results = {}
    for num in sweep.jobs:
        try:
            results[num] = sweep.run_job(num, tmp_path / str(num), cache=cache)
        except NodeRunError as exc:
            results[num] = exc
    return results


BASE = ["model=tiny", "steps=2"]


def test_fused_batches_equal_single_runs_in_floats_and_load_and_encode_once(tmp_path):
    overrides = [BASE + [f"seed={seed}", f"prompt={prompt}", f"guidance={g}"]
                 for seed, prompt, g in [(0, "a red circle", 7.5), (1, "a red circle", 2.0), (2, "a blue square", 7.5),
                                         (3, "a blue square", 1.0)]]
    jobs = jobs_for(overrides)
    cache = ComponentCache()
    sweep = Sweep(jobs, max_batch=8)
    assert len({id(b) for b in sweep.batch_of.values()}) == 1
    batch = sweep.batch_of[0]
    batch.run(cache)
    assert cache.stats.loads == 5 and cache.stats.hits == 0  # one load per component for four jobs
    fused_images = batch.images[("save", "image")]
    for index, job in enumerate(jobs):
        alone = run_plan(job.plan, job.config, tmp_path / f"alone{index}", cache=ComponentCache(), progress=False)
        pixels = alone.outputs["safety"]["image"].pixels
        assert max_diff(fused_images.take(index, index + 1).pixels.numpy(), pixels.numpy()) <= TOLERANCE
    # Each distinct prompt (and the empty negative) was encoded once for the four jobs.
    assert batch.record.of(PromptEncoding)["prompt"].texts_encoded == 3


def test_a_batch_of_different_seeds_moves_the_images(tmp_path):
    jobs = jobs_for([BASE + ["seed=0"], BASE + ["seed=1"]])
    sweep = Sweep(jobs, max_batch=8)
    sweep.batch_of[0].run(ComponentCache())
    images = sweep.batch_of[0].images[("save", "image")].pixels
    assert max_diff(images[0].numpy(), images[1].numpy()) > 100 * TOLERANCE


def test_max_batch_packs_whole_jobs(tmp_path):
    jobs = jobs_for([BASE + [f"seed={s}"] for s in range(5)] + [BASE + ["seed=[7,8]"]])
    sweep = Sweep(jobs, max_batch=2)
    sizes = sorted({id(b): sum(j.images for j in b.jobs) for b in sweep.batch_of.values()}.values())
    # Jobs 0-3 pair up; job 4 would be a batch of one and job 5 fills a batch alone: both run unfused.
    assert sizes == [2, 2] and 4 not in sweep.batch_of and 5 not in sweep.batch_of


def test_one_failing_job_fails_alone_and_the_rest_of_its_batch_is_written(tmp_path, monkeypatch):
    import diffusers.utils.torch_utils

    jobs = jobs_for([BASE + [f"seed={s}"] for s in (3, 13, 23)])
    original = diffusers.utils.torch_utils.randn_tensor

    def randn_failing_on_13(shape, generator=None, **kwargs):  # the noise node's draw, in a batch or alone
        if any(g.initial_seed() == 13 for g in generator or []):
            raise ValueError("seed 13 is cursed")
        return original(shape, generator=generator, **kwargs)

    monkeypatch.setattr(diffusers.utils.torch_utils, "randn_tensor", randn_failing_on_13)
    results = run_sweep(Sweep(jobs, max_batch=8), tmp_path, ComponentCache())
    assert isinstance(results[1], NodeRunError) and "seed 13 is cursed" in str(results[1])
    for num in (0, 2):
        assert [p.name for p in results[num].saved] == [f"text2img_000_seed{3 + 10 * num}.png"]
    assert not list((tmp_path / "1").glob("*.png"))


def test_an_out_of_memory_batch_is_split_and_gives_the_same_pixels(tmp_path, monkeypatch):
    jobs = jobs_for([BASE + [f"seed={s}"] for s in range(4)])
    original = sweeps._run_images

    class OutOfMemoryError(RuntimeError):
        pass

    def small_memory(batch_jobs, cache):
        if len(batch_jobs) > 1:
            cause = OutOfMemoryError("CUDA out of memory")
            raise NodeRunError("text2img.yaml", "denoise", "denoise", cause) from cause
        return original(batch_jobs, cache)

    monkeypatch.setattr(sweeps, "_run_images", small_memory)
    monkeypatch.setattr("torch.cuda.empty_cache", lambda: None)
    results = run_sweep(Sweep(jobs, max_batch=8), tmp_path / "split", ComponentCache())
    monkeypatch.setattr(sweeps, "_run_images", original)
    plain = run_sweep(Sweep(jobs, max_batch=8), tmp_path / "whole", ComponentCache())
    for num in range(4):
        (ours,), (theirs,) = results[num].saved, plain[num].saved
        # batches of 1 and of 4: within one 8-bit level (parity.ONE_LEVEL)
        assert max_diff(np.asarray(Image.open(ours)) / 255, np.asarray(Image.open(theirs)) / 255) <= ONE_LEVEL
        assert [f["text"] for f in metadata(ours)["fallbacks"]] == ["out of memory: batch split 2x"]
        assert metadata(ours)["image"]["seed"] == num


def test_each_png_of_a_fused_batch_records_its_own_prompt_seed_and_guidance(tmp_path):
    jobs = jobs_for([BASE + ["seed=4", "prompt=a red circle", "guidance=3"],
                     BASE + ["seed=5", "prompt=a blue square", "guidance=6"]])
    results = run_sweep(Sweep(jobs, max_batch=8), tmp_path, ComponentCache())
    for num, (seed, prompt, guidance) in enumerate([(4, "a red circle", 3), (5, "a blue square", 6)]):
        meta = metadata(results[num].saved[0])
        assert meta["image"]["seed"] == seed and meta["seeds"]["noise"] == [seed]
        assert meta["prompts"]["prompt"]["prompt"] == prompt
        assert meta["denoise"]["denoise"]["guidance"] == guidance
        assert meta["batch"] == {"jobs": [0, 1], "images": 2}
        assert f"prompt: {prompt}" in meta["workflow_yaml"]


def test_runtime_compile_compiles_the_unet_and_decoder_once_for_every_batch_and_job(tmp_path, monkeypatch):
    import torch

    compiled = []

    def fake_compile(module, **kwargs):  # records what would be compiled; runs it as is
        compiled.append(type(module).__name__)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    cache = ComponentCache()
    jobs = jobs_for([BASE + [f"seed={s}", "runtime.compile=true"] for s in range(3)])
    run_sweep(Sweep(jobs, max_batch=2), tmp_path / "a", cache)  # a batch of two, then one job alone
    run_sweep(Sweep(jobs, max_batch=8), tmp_path / "b", cache)
    assert sorted(compiled) == ["Decoder", "UNet2DConditionModel"]
    assert any(key[-1] == "compiled" for key in cache.keys())


def test_a_batch_sent_to_a_worker_keeps_one_seed_per_image(tmp_path):
    # A prompt sweep at one seed, as a Ray or Slurm worker gets it (pickled): each image keeps its own seed. (The
    # unpickled seeds type was once another object than SEEDS, equal seeds collapsed into one image, and every
    # batch failed and ran job by job.)
    import pickle

    from sdflow.nodes.types import SEEDS
    from sdflow.run.sweep import merged_plan

    jobs = jobs_for([BASE + ["seed=0", f"prompt={p}"] for p in ("a red circle", "a blue square", "a green square")])
    sent = pickle.loads(pickle.dumps(jobs))
    assert sent[0].plan.nodes["noise"].spec.params["seed"].type is SEEDS
    assert merged_plan(sent).nodes["noise"].params["seed"] == [0, 0, 0]
    results = run_sweep(Sweep(sent, max_batch=8), tmp_path, ComponentCache())
    assert all(len(results[num].saved) == 1 for num in range(3))
    assert metadata(results[0].saved[0])["batch"] == {"jobs": [0, 1, 2], "images": 3}  # fused, not job by job
