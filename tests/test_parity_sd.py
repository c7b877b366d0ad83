"""Parity with diffusers: text2img (StableDiffusionPipeline), img2img (StableDiffusionImg2ImgPipeline),
x4 upscale (StableDiffusionUpscalePipeline). fp32, CPU, the same tiny components, max abs diff <= 1e-4."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
from PIL import Image

from parity import as_nhwc, assert_parity, generators, max_diff, sd_pipeline
from sdflow.api import run_workflow
from sdflow.nodes.scheduler import scheduler_class


def sdflow_images(workflow, overrides, node="decode", tmp_path=None):
    result = run_workflow(workflow, ["model=tiny"] + overrides, output_dir=tmp_path)
    return as_nhwc(result.outputs[node]["image"].pixels)


@pytest.fixture(scope="module")
def sd_pipe(tiny_sd):
    return sd_pipeline(tiny_sd)


def diffusers_text2img(pipe, scheduler="model", **kwargs):
    original = pipe.scheduler
    cls = scheduler_class(scheduler)
    if cls is not None:
        pipe.scheduler = cls.from_config(original.config)
    try:
        return pipe(output_type="np", **kwargs).images
    finally:
        pipe.scheduler = original


PROMPT = "a lighthouse at dusk"


@pytest.mark.parametrize("scheduler", ["dpm", "euler", "ddim"])
def test_text2img_matches_stable_diffusion_pipeline_per_scheduler(sd_pipe, tmp_path, scheduler):
    ours = sdflow_images("text2img", [f"scheduler={scheduler}", f"prompt={PROMPT}", "seed=5", "steps=6"], tmp_path=tmp_path)
    theirs = diffusers_text2img(sd_pipe, scheduler, prompt=PROMPT, num_inference_steps=6, guidance_scale=7.5,
                                height=64, width=64, generator=generators([5]))
    other = "euler" if scheduler != "euler" else "ddim"
    moved = diffusers_text2img(sd_pipe, other, prompt=PROMPT, num_inference_steps=6, guidance_scale=7.5,
                               height=64, width=64, generator=generators([5]))
    assert_parity(ours, theirs, moved)


def test_text2img_without_cfg_matches(sd_pipe, tmp_path):
    ours = sdflow_images("text2img", ["guidance=1.0", f"prompt={PROMPT}", "seed=2", "steps=5"], tmp_path=tmp_path)
    theirs = diffusers_text2img(sd_pipe, prompt=PROMPT, num_inference_steps=5, guidance_scale=1.0, height=64,
                                width=64, generator=generators([2]))
    moved = diffusers_text2img(sd_pipe, prompt=PROMPT, num_inference_steps=5, guidance_scale=7.5, height=64,
                               width=64, generator=generators([2]))
    assert_parity(ours, theirs, moved)


def test_text2img_negative_prompt_matches(sd_pipe, tmp_path):
    ours = sdflow_images("text2img", [f"prompt={PROMPT}", "negative_prompt=blurry low quality", "seed=4", "steps=5"],
                         tmp_path=tmp_path)
    theirs = diffusers_text2img(sd_pipe, prompt=PROMPT, negative_prompt="blurry low quality", num_inference_steps=5,
                                height=64, width=64, generator=generators([4]))
    moved = diffusers_text2img(sd_pipe, prompt=PROMPT, num_inference_steps=5, height=64, width=64,
                               generator=generators([4]))
    assert_parity(ours, theirs, moved)


def test_text2img_non_square_matches(sd_pipe, tmp_path):
    ours = sdflow_images("text2img", [f"prompt={PROMPT}", "width=96", "height=48", "seed=9", "steps=4"], tmp_path=tmp_path)
    theirs = diffusers_text2img(sd_pipe, prompt=PROMPT, num_inference_steps=4, height=48, width=96,
                                generator=generators([9]))
    assert ours.shape == (1, 48, 96, 3)
    moved = diffusers_text2img(sd_pipe, prompt=PROMPT, num_inference_steps=4, height=48, width=96,
                               generator=generators([10]))
    assert_parity(ours, theirs, moved)


def test_text2img_batch_of_two_seeds_matches(sd_pipe, tmp_path):
    ours = sdflow_images("text2img", [f"prompt={PROMPT}", "seed=[3,11]", "steps=4"], tmp_path=tmp_path)
    theirs = diffusers_text2img(sd_pipe, prompt=PROMPT, num_inference_steps=4, height=64, width=64,
                                num_images_per_prompt=2, generator=generators([3, 11]))
    assert ours.shape[0] == 2
    assert_parity(ours, theirs, theirs[::-1].copy())


def test_batch_of_n_equals_n_single_runs(tmp_path):
    seeds = [21, 22, 23]
    batch = sdflow_images("text2img", [f"prompt={PROMPT}", f"seed=[{','.join(map(str, seeds))}]", "steps=4",
                                       "scheduler=euler_a"], tmp_path=tmp_path)
    singles = np.concatenate([sdflow_images("text2img", [f"prompt={PROMPT}", f"seed={s}", "steps=4",
                                                         "scheduler=euler_a"], tmp_path=tmp_path) for s in seeds])
    assert max_diff(batch, singles) <= 1e-4
    assert max_diff(batch[0], batch[1]) > 1e-2  # different seeds really differ


@pytest.fixture(scope="module")
def init_image():
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, 64, dtype=np.float32)
    array = np.stack([np.tile(gradient, (64, 1)), np.tile(gradient[:, None], (1, 64)),
                      rng.uniform(0, 255, (64, 64))], axis=-1)
    return Image.fromarray(array.astype(np.uint8))


@pytest.fixture(scope="module")
def img2img_pipe(tiny_sd):
    pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(tiny_sd, safety_checker=None,
                                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
def test_img2img_matches_img2img_pipeline(img2img_pipe, init_image, tmp_path, strength):
    image_path = tmp_path / "init.png"
    init_image.save(image_path)
    ours = sdflow_images("img2img", [f"image={image_path}", f"strength={strength}", f"prompt={PROMPT}", "seed=8",
                                     "steps=10"], tmp_path=tmp_path)
    theirs = img2img_pipe(prompt=PROMPT, image=init_image, strength=strength, num_inference_steps=10,
                          generator=generators([8]), output_type="np").images
    other = 0.75 if strength != 0.75 else 0.3
    moved = img2img_pipe(prompt=PROMPT, image=init_image, strength=other, num_inference_steps=10,
                         generator=generators([8]), output_type="np").images
    assert_parity(ours, theirs, moved)


def test_img2img_depends_on_its_image(img2img_pipe, init_image, tmp_path):
    flipped = init_image.transpose(Image.FLIP_LEFT_RIGHT)
    a = img2img_pipe(prompt=PROMPT, image=init_image, strength=0.5, num_inference_steps=10,
                     generator=generators([8]), output_type="np").images
    b = img2img_pipe(prompt=PROMPT, image=flipped, strength=0.5, num_inference_steps=10,
                     generator=generators([8]), output_type="np").images
    assert max_diff(a, b) > 1e-2, "the tiny VAE ignores its input image: img2img parity would be blind"


@pytest.fixture(scope="module")
def upscale_pipe(tiny_upscaler):
    pipe = diffusers.StableDiffusionUpscalePipeline.from_pretrained(tiny_upscaler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_x4_upscale_matches_upscale_pipeline_with_noise_level(upscale_pipe, init_image, tmp_path):
    low_res = init_image.resize((16, 16))
    image_path = tmp_path / "low.png"
    low_res.save(image_path)
    ours = sdflow_images("upscale", [f"image={image_path}", "noise_level=60", f"prompt={PROMPT}", "seed=1",
                                     "upscale_steps=5", "upscale_guidance=9.0"], tmp_path=tmp_path)
    theirs = upscale_pipe(prompt=PROMPT, image=low_res, noise_level=60, num_inference_steps=5, guidance_scale=9.0,
                          generator=generators([1]), output_type="np").images
    assert ours.shape == (1, 64, 64, 3)
    moved = upscale_pipe(prompt=PROMPT, image=low_res, noise_level=20, num_inference_steps=5, guidance_scale=9.0,
                         generator=generators([1]), output_type="np").images
    assert_parity(ours, theirs, moved)
