"""A1111 ``parameters`` metadata in every PNG, and ``reproduce``: an image made again from its metadata, with the
same pixels; a missing or changed model is named before anything runs."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
from PIL import Image

from sdflow.nodes.a1111 import parse_parameters
from sdflow.api import run_workflow
from sdflow.reproduce import ReproduceError, reproduce


def pixels(path):
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def own_model(tiny_sd, tmp_path_factory):
    """A copy of the tiny model at a path of its own, which tests may move or change."""
    folder = tmp_path_factory.mktemp("own-model") / "my-model"
    shutil.copytree(tiny_sd, folder)
    return folder


@pytest.fixture(scope="module")
def made(own_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("made")
    result = run_workflow("text2img", ["model=tiny", f"model.path={own_model}", "prompt='a red cat, on the left'",
                                       "negative_prompt=blurry", "seed=[3,4]", "steps=3", "scheduler=dpm_karras",
                                       "guidance=6.5"], output_dir=out)
    return result.saved


def test_every_png_carries_a1111_parameters(made, own_model):
    with Image.open(made[1]) as image:
        text = image.text["parameters"]
    lines = text.split("\n")
    assert lines[0] == "a red cat, on the left" and lines[1] == "Negative prompt: blurry"
    unet_sha = hashlib.sha256((own_model / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()
    assert lines[2] == ("Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 4, Size: 64x64, "
                        f"Model hash: {unet_sha[:10]}, Model: my-model, Version: sdflow " + lines[2].split("sdflow ")[1])
    parsed = parse_parameters(text)
    assert parsed["Prompt"] == "a red cat, on the left" and parsed["Negative prompt"] == "blurry"
    assert parsed["Seed"] == "4" and parsed["Size"] == "64x64" and parsed["Sampler"] == "DPM++ 2M"


def test_img2img_records_its_denoising_strength(tmp_path):
    result = run_workflow("chain", ["model=tiny", "prompt=a red cat", "seed=3", "steps=2", "upscale_steps=2",
                                    "strength=0.6"], output_dir=tmp_path)
    texts = {path.name.split("_")[1]: Image.open(path).text["parameters"] for path in result.saved}
    assert "Denoising strength: 0.6" in texts["img2img"] and "Denoising strength" not in texts["text2img"]
    assert "Model: tiny-x4" in texts["upscaled"] and "Model: tiny," in texts["img2img"]


def test_reproduce_makes_the_same_pixels(made, tmp_path):
    again = reproduce(made[1], output_dir=tmp_path)
    assert again.remade is not None and again.remade.name == made[1].name
    assert again.same_pixels and again.max_difference == 0
    assert np.array_equal(pixels(made[1]), pixels(again.remade))
    assert (tmp_path / f"{made[1].stem}.workflow.yaml").exists()


def test_reproduce_with_overrides(made, tmp_path):
    again = reproduce(made[0], ["steps=4", "noise.seed=[9,4]"], output_dir=tmp_path)
    assert again.same_pixels is None  # the overrides changed the image: nothing to compare
    assert not np.array_equal(pixels(made[0]), pixels(again.remade))
    assert parse_parameters(Image.open(again.remade).text["parameters"])["Seed"] == "9"
    with pytest.raises(ReproduceError, match="no node of the workflow has a parameter 'stepz'"):
        reproduce(made[0], ["stepz=4"], output_dir=tmp_path)


def test_a_missing_model_is_named_with_the_fix(made, own_model, tmp_path):
    moved = tmp_path / "moved-model"
    shutil.copytree(own_model, moved)
    shutil.move(own_model, tmp_path / "gone")
    try:
        with pytest.raises(ReproduceError, match=r"node 'model': the model '.*my-model' is missing.*model.source="):
            reproduce(made[0], output_dir=tmp_path / "a")
        again = reproduce(made[0], [f"model.source={moved}"], output_dir=tmp_path / "b")
        assert again.same_pixels
    finally:
        shutil.move(tmp_path / "gone", own_model)


def test_a_changed_weight_file_is_named(made, own_model, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(own_model, changed)
    weights = changed / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(ReproduceError, match=r"'vae/diffusion_pytorch_model.safetensors' changed \(sha256"):
        reproduce(made[0], [f"model.source={changed}"], output_dir=tmp_path / "a")
    again = reproduce(made[0], [f"model.source={changed}"], output_dir=tmp_path / "b", check_models=False)
    assert any("changed" in note for note in again.notes)


def test_a_png_without_sdflow_metadata_is_refused(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(ReproduceError, match="has no sdflow metadata"):
        reproduce(tmp_path / "plain.png", output_dir=tmp_path)


def with_sdflow_record(png, folder, change):
    """A copy of ``png`` whose ``sdflow`` JSON chunk is ``change(record)`` (the other chunks and pixels kept)."""
    import json

    from PIL.PngImagePlugin import PngInfo

    with Image.open(png) as image:
        chunks = dict(image.text)
        info = PngInfo()
        for key, value in chunks.items():
            info.add_itxt(key, json.dumps(change(json.loads(value))) if key == "sdflow" else value)
        copy = folder / png.name
        image.save(copy, pnginfo=info)
    return copy


def test_reproduce_reads_the_pngs_of_schema_1_and_refuses_a_newer_schema(made, tmp_path):
    def as_schema_1(record):  # as sdflow 0.1.0 wrote it: no schema key, fallbacks as plain texts
        record.pop("schema")
        record["fallbacks"] = ["decode: out of memory decoding 2 images at once; decoded them as 1 + 1"]
        return record

    old = with_sdflow_record(made[0], tmp_path, as_schema_1)
    again = reproduce(old, output_dir=tmp_path / "again")
    assert again.same_pixels and again.max_difference == 0
    (tmp_path / "newer").mkdir()
    newer = with_sdflow_record(made[0], tmp_path / "newer", lambda record: {**record, "schema": 3})
    with pytest.raises(ReproduceError, match="newer sdflow .*schema 3"):
        reproduce(newer, output_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()
