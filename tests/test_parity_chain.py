"""Parity with diffusers: the chain's later stages with seeds of their own (refine_seed, upscale_seed) equal
StableDiffusionImg2ImgPipeline and StableDiffusionUpscalePipeline given fresh generators from those seeds, on
the image the stage before made. fp32, CPU, the same tiny components, max abs diff <= 1e-4."""

from __future__ import annotations

import diffusers
import pytest

from parity import as_nhwc, assert_parity, generators
from sdflow.api import run_workflow

PROMPT = "a lighthouse at dusk"
CHAIN = ["model=tiny", f"prompt={PROMPT}", "seed=2", "steps=4", "strength=0.75", "upscale_steps=2", "noise_level=40"]


@pytest.fixture(scope="module")
def img2img_pipe(tiny_sd):
    pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(tiny_sd, safety_checker=None,
                                                                    requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def upscale_pipe(tiny_upscaler):
    pipe = diffusers.StableDiffusionUpscalePipeline.from_pretrained(tiny_upscaler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    """The chain with the default stage seeds (the image's own, 2) and with seeds of their own."""
    folder = tmp_path_factory.mktemp("chains")
    default = run_workflow("chain", CHAIN, output_dir=folder / "default")
    own = run_workflow("chain", CHAIN + ["refine_seed=9", "upscale_seed=13"], output_dir=folder / "own")
    return default, own


def stage(result, node):
    return result.outputs[node]["image"].pixels


def img2img(pipe, image, seed):
    return pipe(prompt=PROMPT, image=image, strength=0.75, num_inference_steps=4, guidance_scale=7.5,
                generator=generators([seed]), output_type="np").images


def test_refine_seed_seeds_the_img2img_stage(img2img_pipe, chains):
    default, own = chains
    assert_parity(as_nhwc(stage(own, "draft_image")), as_nhwc(stage(default, "draft_image")))  # text2img unchanged
    draft = stage(own, "draft_safety")
    assert_parity(as_nhwc(stage(own, "refined_image")), img2img(img2img_pipe, draft, 9), img2img(img2img_pipe, draft, 2))
    assert_parity(as_nhwc(stage(default, "refined_image")), img2img(img2img_pipe, draft, 2))


def test_upscale_seed_seeds_the_x4_stage(upscale_pipe, chains):
    _, own = chains
    refined = stage(own, "refined_safety")

    def upscale(seed):
        return upscale_pipe(prompt=PROMPT, image=refined, noise_level=40, num_inference_steps=2, guidance_scale=9.0,
                            generator=generators([seed]), output_type="np").images

    assert_parity(as_nhwc(stage(own, "upscaled_image")), upscale(13), upscale(2))
