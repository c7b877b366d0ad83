"""ControlNet runs: sweeps over the control image fuse into one batch (per-image control images) and every job shares
one load of the ControlNet; each PNG records the ControlNet, its hash, its control image's hash and the scales (in
sdflow's JSON and as A1111's "ControlNet 0" setting); the web form shows the ControlNet fields."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from parity import TOLERANCE, max_diff
from sdflow.api import compose_config, plan_workflow, run_plan, run_workflow
from sdflow.engine import ComponentCache
from sdflow.models.hashes import file_sha256
from sdflow.nodes.a1111 import parse_parameters
from sdflow.run.sweep import Job, Sweep
from sdflow.ui.form import load_form
from sdflow.workflows import workflow_path


@pytest.fixture(scope="module")
def controlnet(tiny_sd, tmp_path_factory):
    from sdflow.models.tiny_controlnet import build_controlnet

    return build_controlnet(tiny_sd, tmp_path_factory.mktemp("controlnet") / "cn")


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    folder = tmp_path_factory.mktemp("maps")
    rng = np.random.default_rng(11)
    paths = []
    for i in range(2):
        paths.append(folder / f"map{i}.png")
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def base(controlnet, image):
    return ["workflow=controlnet", "model=tiny", "steps=2", "seed=4", f"controlnet={controlnet}",
            f"control_image={image}"]


def test_a_sweep_over_control_images_is_one_batch_and_the_controlnet_loads_once(controlnet, maps, tmp_path):
    overrides = [base(controlnet, maps[0]) + ["save_control=true"], base(controlnet, maps[1]) + ["save_control=true"],
                 base(controlnet, maps[0]) + ["control_scale=0.5"]]
    jobs = []
    for num, job_overrides in enumerate(overrides):
        config = compose_config(job_overrides)
        jobs.append(Job(num, tuple(job_overrides), config, plan_workflow(config)))
    sweep = Sweep(jobs, max_batch=8)
    assert sweep.batch_of[0] is sweep.batch_of[1]  # the control image is per image: two jobs, one batch
    assert 2 not in sweep.batch_of  # the scale is the whole loop's: that job runs alone
    cache = ComponentCache()
    sweep.batch_of[0].run(cache)
    fused = sweep.batch_of[0].images[("save", "image")].pixels
    sweep.run_job(2, tmp_path / "2", cache=cache)
    controlnet_keys = [k for k in cache.keys() if str(k[0]).startswith("controlnet:")]
    assert len(controlnet_keys) == 1 and cache.stats.loads == 6  # the model's 5 parts and the ControlNet, once
    for index, job in enumerate(jobs[:2]):
        alone = run_plan(job.plan, job.config, tmp_path / f"alone{index}", cache=cache, progress=False)
        assert max_diff(fused[index: index + 1].numpy(), alone.outputs["safety"]["image"].pixels.numpy()) <= TOLERANCE
    assert max_diff(fused[0].numpy(), fused[1].numpy()) > 100 * TOLERANCE  # each image had its own control image
    for num in (0, 1):  # each job's PNG names its own control image
        result = sweep.run_job(num, tmp_path / f"job{num}", cache=cache)
        assert any("control maps were not saved" in w for w in result.record.warnings)  # said, not dropped silently
        written = result.saved[0]
        with Image.open(written) as image:
            recorded = json.loads(image.text["sdflow"])["controlnets"]["control"]["image_sha256"]
        prepared = np.asarray(Image.open(maps[num]).convert("RGB"))
        assert recorded == [hashlib.sha256(prepared.tobytes()).hexdigest()]


def test_each_png_records_the_controlnet_its_hash_the_control_image_and_the_scales(controlnet, maps, tmp_path):
    result = run_workflow("controlnet", base(controlnet, maps[1])[1:] + ["control_scale=0.7", "control_end=0.5"],
                          output_dir=tmp_path)
    png = next(p for p in result.saved if p.name.startswith("controlnet"))
    with Image.open(png) as image:
        record, parameters = json.loads(image.text["sdflow"]), parse_parameters(image.text["parameters"])
    weights = controlnet / "diffusion_pytorch_model.safetensors"
    assert record["models"]["controlnet_model"]["sha256"] == {weights.name: file_sha256(weights)}
    unit = record["controlnets"]["control"]
    prepared = np.asarray(Image.open(maps[1]).convert("RGB"))  # 64x64 already: prepared as is
    assert unit["image_sha256"] == [hashlib.sha256(prepared.tobytes()).hexdigest()]
    assert (unit["source"], unit["scale"], unit["start"], unit["end"], unit["guess_mode"]) == (
        str(controlnet), 0.7, 0.0, 0.5, False)
    assert parameters["ControlNet 0"] == (f"Model: cn [{file_sha256(weights)[:8]}], Weight: 0.7, Guidance Start: 0.0, "
                                          "Guidance End: 0.5, Control Mode: Balanced")


def test_the_web_form_shows_the_controlnet_fields():
    form = {f.key: f for f in load_form(workflow_path("controlnet"), compose_config([]))}
    assert (form["control_image"].kind, form["control_image"].per_image) == ("file", True)
    scale = form["control_scale"]
    assert (scale.kind, scale.minimum, scale.default, scale.feeds) == ("float", 0.0, 1.0, ("control.scale",))
    assert (form["control_start"].maximum, form["control_end"].default) == (1.0, 1.0)
    assert form["guess_mode"].kind == "bool" and form["save_control"].kind == "bool"
    assert form["control_preprocess"].choices == ("none", "canny", "depth")


def test_a_single_safetensors_file_loads_as_its_folder_does(controlnet, maps, tmp_path):
    import shutil

    single = tmp_path / "single" / "my_controlnet.safetensors"
    single.parent.mkdir()
    shutil.copy(controlnet / "diffusion_pytorch_model.safetensors", single)
    shutil.copy(controlnet / "config.json", single.parent / "config.json")  # its config, found beside it
    images = [run_workflow("controlnet", base(source, maps[0])[1:], output_dir=tmp_path / name).outputs["decode"]["image"]
              for name, source in (("folder", controlnet), ("file", single))]
    assert (images[0].pixels == images[1].pixels).all()


def test_the_offline_command_makes_a_controlnet_for_the_shapes_model_and_runs_it(tmp_path):
    from sdflow.models.tiny_controlnet import main

    assert main(["builtin:shapes", str(tmp_path / "shapes-controlnet")]) == 0
    picture = np.zeros((64, 64, 3), dtype=np.uint8)
    picture[16:48, 8:40] = 255
    Image.fromarray(picture).save(tmp_path / "square.png")
    result = run_workflow("controlnet", [f"controlnet={tmp_path / 'shapes-controlnet'}", "steps=4",
                                         f"control_image={tmp_path / 'square.png'}", "control_preprocess=canny"],
                          output_dir=tmp_path / "out")
    assert len(result.saved) == 1
    with Image.open(result.saved[0]) as image:
        assert json.loads(image.text["sdflow"])["controlnets"]["control"]["source"] == str(tmp_path / "shapes-controlnet")
    assert result.outputs["control_image"]["image"].pixels.amax() == 1.0  # canny found the square's edges


def test_reproduce_makes_a_controlnet_image_again_and_names_a_changed_controlnet(controlnet, maps, tmp_path):
    import shutil

    from sdflow.reproduce import ReproduceError, reproduce

    made = run_workflow("controlnet", base(controlnet, maps[0])[1:], output_dir=tmp_path / "made").saved[0]
    again = reproduce(made, output_dir=tmp_path / "again")
    assert again.same_pixels and again.max_difference == 0
    changed = tmp_path / "changed"
    shutil.copytree(controlnet, changed)
    weights = changed / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ReproduceError, match="node 'controlnet_model': the model .* is not the one the image was made"):
        reproduce(made, [f"controlnet_model.source={changed}"], output_dir=tmp_path / "b")


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_an_offloaded_controlnet_gives_the_same_pixels(controlnet, maps, tmp_path, mode):
    plain = run_workflow("controlnet", base(controlnet, maps[0])[1:], output_dir=tmp_path / "plain")
    offloaded = run_workflow("controlnet", base(controlnet, maps[0])[1:] + [f"runtime.offload={mode}",
                                                                          "runtime.output_cache=false"],
                             output_dir=tmp_path / mode, cache=ComponentCache())
    assert not offloaded.record.reused  # every node ran again, with the offloaded models
    assert max_diff(plain.outputs["decode"]["image"].pixels.numpy(),
                    offloaded.outputs["decode"]["image"].pixels.numpy()) <= TOLERANCE


def test_an_out_of_memory_batch_with_one_control_image_each_is_split_with_the_same_pixels(controlnet, maps, tmp_path,
                                                                                           monkeypatch):
    import diffusers

    args = ["model=tiny", "steps=2", "seed=[1,2]", f"controlnet={controlnet}", f"control_image=[{maps[0]},{maps[1]}]",
            "runtime.output_cache=false"]
    whole = run_workflow("controlnet", args, output_dir=tmp_path / "whole")
    original = diffusers.ControlNetModel.forward

    def small_memory(self, sample, *rest, **kwargs):  # two images at once (four CFG rows) do not fit
        if sample.shape[0] > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return original(self, sample, *rest, **kwargs)

    monkeypatch.setattr(diffusers.ControlNetModel, "forward", small_memory)
    split = run_workflow("controlnet", args, output_dir=tmp_path / "split")
    assert [f.kind for f in split.record.fallbacks] == ["batch_split"]
    # each half kept its own control image: the same pixels as the whole batch
    assert max_diff(split.outputs["decode"]["image"].pixels.numpy(),
                    whole.outputs["decode"]["image"].pixels.numpy()) <= TOLERANCE
