"""Parity with diffusers' StableDiffusionDepth2ImgPipeline: depth estimated by the model's DPT, and a depth
map given as an image file, at strength < 1. fp32, CPU, max abs diff <= 1e-4. Plus the validation errors
for a depth step wired to a model without a depth input."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from parity import as_nhwc, assert_parity, generators, max_diff
from sdflow.api import run_workflow
from sdflow.workflows import WORKFLOWS_DIR
from sdflow.engine import ValidationError

PROMPT = "a castle on the left"


@pytest.fixture(scope="module")
def tiny_depth():
    from sdflow.models.builtin import builtin_model

    return builtin_model("tiny-depth")


@pytest.fixture(scope="module")
def depth_pipe(tiny_depth):
    pipe = diffusers.StableDiffusionDepth2ImgPipeline.from_pretrained(tiny_depth)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("depth2img")
    rng = np.random.default_rng(2)
    gradient = np.linspace(0, 255, 64, dtype=np.float32)
    image = np.stack([np.tile(gradient, (64, 1)), np.tile(gradient[:, None], (1, 64)), rng.uniform(0, 255, (64, 64))],
                     axis=-1)
    yy, xx = np.mgrid[0:64, 0:64]
    radial = 255 * (1 - np.hypot(xx - 20, yy - 40) / 70).clip(0, 1)  # a near bump, lower left
    images = {"image": Image.fromarray(image.astype(np.uint8)), "depth": Image.fromarray(radial.astype(np.uint8))}
    paths = {}
    for name, img in images.items():
        paths[name] = folder / f"{name}.png"
        img.save(paths[name])
    return images, paths


def depth_tensor(path):
    """A depth image file as the pipeline's depth_map argument: [1, H, W], read as sdflow reads it."""
    return torch.from_numpy(np.array(Image.open(path).convert("L")).astype(np.float32) / 255.0)[None]


def sdflow_depth2img(paths, *extra, seed=4, strength=0.75):
    result = run_workflow("depth2img", ["model=tiny_depth", f"image={paths['image']}", f"prompt={PROMPT}",
                                        f"seed={seed}", f"strength={strength}", "steps=8", *extra],
                          output_dir=paths["image"].parent / "out")
    return as_nhwc(result.outputs["decode"]["image"].pixels)


def diffusers_depth2img(pipe, images, depth_map=None, seed=4, strength=0.75):
    return pipe(prompt=PROMPT, image=images["image"], depth_map=depth_map, strength=strength, num_inference_steps=8,
                guidance_scale=7.5, generator=generators([seed]), output_type="np").images


def test_tiny_dpt_depth_depends_on_its_image(depth_pipe, files):
    # A default-initialised DPT predicts ~constant depth, which would make the DPT parity test blind.
    images, _ = files
    pixels = depth_pipe.feature_extractor(images=[images["image"], images["image"].transpose(Image.FLIP_LEFT_RIGHT)],
                                          return_tensors="pt").pixel_values
    with torch.no_grad():
        depth = depth_pipe.depth_estimator(pixels).predicted_depth
    low, high = depth.amin(dim=[1, 2], keepdim=True), depth.amax(dim=[1, 2], keepdim=True)
    normalized = (depth - low) / (high - low)
    assert (high - low).min() > 1e-3 * high.max()
    assert max_diff(normalized[0].numpy(), normalized[1].numpy()) > 0.2


def test_depth2img_with_dpt_depth_matches_depth2img_pipeline(depth_pipe, files):
    images, paths = files
    ours = sdflow_depth2img(paths)
    theirs = diffusers_depth2img(depth_pipe, images)
    moved = diffusers_depth2img(depth_pipe, images, depth_map=depth_tensor(paths["depth"]))  # the depth matters
    assert_parity(ours, theirs, moved)


def test_depth2img_with_user_depth_map_matches_depth2img_pipeline(depth_pipe, files):
    images, paths = files
    ours = sdflow_depth2img(paths, f"depth_map={paths['depth']}", seed=6, strength=0.6)
    theirs = diffusers_depth2img(depth_pipe, images, depth_map=depth_tensor(paths["depth"]), seed=6, strength=0.6)
    flipped = depth_tensor(paths["depth"]).flip(-1)
    moved = diffusers_depth2img(depth_pipe, images, depth_map=flipped, seed=6, strength=0.6)
    assert_parity(ours, theirs, moved)


def test_depth_step_given_a_plain_unet_is_a_validation_error(tiny_depth, tiny_sd, files, tmp_path):
    # depth2img with its UNet swapped for a plain 4-channel one: the depth channel has nowhere to go.
    _, paths = files
    workflow = yaml.safe_load((WORKFLOWS_DIR / "depth2img.yaml").read_text())
    workflow["nodes"]["plain"] = {"type": "load_model", "source": "builtin:tiny"}
    workflow["nodes"]["denoise"]["unet"] = "plain.unet"
    path = tmp_path / "depth_on_plain_unet.yaml"
    path.write_text(yaml.safe_dump(workflow, sort_keys=False))
    with pytest.raises(ValidationError) as err:
        run_workflow(str(path), ["model=tiny_depth", f"image={paths['image']}", f"depth_map={paths['depth']}"])
    message = str(err.value)
    assert "node 'denoise'" in message and "'plain.unet' takes 4 input channels" in message
    assert "1 condition channels" in message and "'depth.condition'" in message and "model=tiny_depth" in message


def test_depth2img_on_a_model_without_depth_is_a_validation_error(tiny_sd, files):
    _, paths = files
    with pytest.raises(ValidationError) as err:
        run_workflow("depth2img", ["model=tiny", f"image={paths['image']}", f"depth_map={paths['depth']}"])
    message = str(err.value)
    assert "node 'model'" in message and "no 'depth_estimator' component" in message
    assert "model=tiny_depth" in message and "model=sd2_depth" in message
