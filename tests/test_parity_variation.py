"""Parity with diffusers' StableDiffusionImageVariationPipeline: the variation workflow (a CLIP image
embedding conditions the UNet instead of a prompt). fp32, CPU, the tiny_variation model, max abs diff <= 1e-4."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
from PIL import Image

from parity import as_nhwc, assert_parity, generators
from sdflow.api import run_workflow
from sdflow.engine import ValidationError


@pytest.fixture(scope="module")
def tiny_variation():
    from sdflow.models.builtin import builtin_model

    return builtin_model("tiny-variation")


@pytest.fixture(scope="module")
def variation_pipe(tiny_variation):
    pipe = diffusers.StableDiffusionImageVariationPipeline.from_pretrained(tiny_variation, safety_checker=None,
                                                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def source_image():
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, 64, dtype=np.float32)
    array = np.stack([np.tile(gradient, (64, 1)), np.tile(gradient[:, None], (1, 64)),
                      rng.uniform(0, 255, (64, 64))], axis=-1)
    return Image.fromarray(array.astype(np.uint8))


def sdflow_variation(image: Image.Image, tmp_path, overrides):
    path = tmp_path / "source.png"
    image.save(path)
    result = run_workflow("variation", ["model=tiny_variation", f"image={path}"] + overrides, output_dir=tmp_path)
    return as_nhwc(result.outputs["decode"]["image"].pixels)


def diffusers_variation(pipe, image, seed, **kwargs):
    return pipe(image=image, height=64, width=64, generator=generators([seed]), output_type="np", **kwargs).images


def test_variation_matches_pipeline_and_depends_on_its_image(variation_pipe, source_image, tmp_path):
    ours = sdflow_variation(source_image, tmp_path, ["seed=5", "steps=5"])
    theirs = diffusers_variation(variation_pipe, source_image, 5, num_inference_steps=5, guidance_scale=7.5)
    # The same seed with another image: the image embedding must move the output, or parity is blind.
    moved = diffusers_variation(variation_pipe, source_image.transpose(Image.FLIP_LEFT_RIGHT), 5,
                                num_inference_steps=5, guidance_scale=7.5)
    assert_parity(ours, theirs, moved)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_variation_guidance_matches_pipeline(variation_pipe, source_image, tmp_path, guidance):
    ours = sdflow_variation(source_image, tmp_path, ["seed=2", "steps=4", f"guidance={guidance}"])
    theirs = diffusers_variation(variation_pipe, source_image, 2, num_inference_steps=4, guidance_scale=guidance)
    moved = diffusers_variation(variation_pipe, source_image, 2, num_inference_steps=4, guidance_scale=7.5)
    assert_parity(ours, theirs, moved)


def test_variation_on_a_text_model_says_which_model_it_needs(source_image, tmp_path):
    path = tmp_path / "source.png"
    source_image.save(path)
    with pytest.raises(ValidationError) as caught:
        run_workflow("variation", ["model=tiny", f"image={path}"], output_dir=tmp_path)
    message = str(caught.value)
    assert "model" in message and "source" in message and "image_encoder" in message
    assert "model=tiny_variation" in message and "lambdalabs/sd-image-variations-diffusers" in message
    assert "model.path=" in message
