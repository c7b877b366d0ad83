"""Parity with diffusers: workflow sdxl_img2img against StableDiffusionXLImg2ImgPipeline with the SDXL refiner,
on an image file: strength, size conditioning that follows the image's size, aesthetic scores. fp32, CPU, the
tiny refiner folder, max abs diff <= 1e-4."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
from PIL import Image

from parity import as_nhwc, assert_parity, generators
from sdflow.api import run_workflow

PROMPT = "a lighthouse at dusk"


@pytest.fixture(scope="module")
def refiner_pipe():
    from sdflow.models.builtin import builtin_model

    pipe = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(builtin_model("tiny-sdxl-refiner"),
                                                                      add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    """A 96x64 picture with structure (a random VAE must see what it encodes), wider than high."""
    rng = np.random.default_rng(1)
    array = np.zeros((64, 96, 3), dtype=np.uint8)
    array[:, :48] = (220, 40, 30)
    array[16:48, 40:80] = (20, 60, 230)
    array = np.clip(array.astype(int) + rng.integers(-20, 20, array.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("picture") / "picture.png"
    Image.fromarray(array).save(path)
    return path


def ours(picture, tmp_path, *overrides):
    result = run_workflow("sdxl_img2img", ["model=tiny_sdxl", f"image={picture}", f"prompt={PROMPT}", "steps=5",
                                           *overrides], output_dir=tmp_path)
    return as_nhwc(result.outputs["decode"]["image"].pixels)


def theirs(pipe, picture, seed=3, strength=0.75, **kwargs):
    kwargs.setdefault("guidance_scale", 7.5)  # sdflow's default; the pipeline's is 5.0
    with Image.open(picture) as image:
        return pipe(prompt=PROMPT, image=image.convert("RGB"), strength=strength, num_inference_steps=5,
                    generator=generators([seed]), output_type="np", **kwargs).images


def test_sdxl_img2img_matches_the_refiner_pipeline_per_strength(refiner_pipe, picture, tmp_path):
    image = ours(picture, tmp_path, "seed=3", "strength=0.6")
    assert image.shape == (1, 64, 96, 3)  # the image's own size, not the preset's width and height
    assert_parity(image, theirs(refiner_pipe, picture, strength=0.6), theirs(refiner_pipe, picture, strength=0.9))


def test_sdxl_img2img_size_conditioning_follows_the_image(refiner_pipe, picture, tmp_path):
    image = ours(picture, tmp_path, "seed=4", "strength=1.0")
    # moved: the same run told a square original size (as if width/height had been used)
    assert_parity(image, theirs(refiner_pipe, picture, seed=4, strength=1.0),
                  theirs(refiner_pipe, picture, seed=4, strength=1.0, original_size=(64, 64)))
    told = ours(picture, tmp_path, "seed=4", "strength=1.0", "original_width=64", "original_height=64", "crop_top=8")
    assert_parity(told, theirs(refiner_pipe, picture, seed=4, strength=1.0, original_size=(64, 64),
                               crops_coords_top_left=(8, 0)))


def test_sdxl_img2img_aesthetic_scores_reach_the_refiner(refiner_pipe, picture, tmp_path):
    image = ours(picture, tmp_path, "seed=5", "strength=1.0", "aesthetic_score=9.0", "negative_aesthetic_score=1.0",
                 "negative_prompt=blurry")
    assert_parity(image, theirs(refiner_pipe, picture, seed=5, strength=1.0, aesthetic_score=9.0,
                                negative_aesthetic_score=1.0, negative_prompt="blurry"),
                  theirs(refiner_pipe, picture, seed=5, strength=1.0, negative_prompt="blurry"))
