"""Parity with diffusers: SDXL text2img (StableDiffusionXLPipeline) and base + refiner
(StableDiffusionXLPipeline with denoising_end handing latents to StableDiffusionXLImg2ImgPipeline with
denoising_start). fp32, CPU, the same tiny folders, max abs diff <= 1e-4; plus the SDXL wiring mistakes
that validation catches before anything loads."""

from __future__ import annotations

import diffusers
import pytest

from parity import as_nhwc, assert_parity, generators
from sdflow.api import run_workflow
from sdflow.engine import ComponentCache, ValidationError

PROMPT = "a lighthouse at dusk"


@pytest.fixture(scope="module")
def tiny_sdxl():
    from sdflow.models.builtin import builtin_model

    return builtin_model("tiny-sdxl")


@pytest.fixture(scope="module")
def tiny_sdxl_refiner():
    from sdflow.models.builtin import builtin_model

    return builtin_model("tiny-sdxl-refiner")


@pytest.fixture(scope="module")
def base_pipe(tiny_sdxl):
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def refiner_pipe(tiny_sdxl_refiner, base_pipe):
    # diffusers' documented recipe: the refiner borrows the base's VAE and second text encoder.
    pipe = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(
        tiny_sdxl_refiner, vae=base_pipe.vae, text_encoder_2=base_pipe.text_encoder_2, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdflow_images(workflow, overrides, tmp_path, cache=None):
    result = run_workflow(workflow, ["model=tiny_sdxl"] + overrides, output_dir=tmp_path, cache=cache)
    return as_nhwc(result.outputs["decode"]["image"].pixels)


def diffusers_sdxl(pipe, seed, **kwargs):
    # negative_prompt=None (diffusers' default) is sdflow's empty negative prompt: zeroed when the model says so.
    kwargs.setdefault("guidance_scale", 7.5)  # sdflow's default; SDXL's pipeline defaults to 5.0
    return pipe(prompt=PROMPT, height=64, width=64, generator=generators([seed]), output_type="np", **kwargs).images


def test_sdxl_with_negative_prompt_matches_sdxl_pipeline(base_pipe, tmp_path):
    ours = sdflow_images("sdxl", [f"prompt={PROMPT}", "negative_prompt=blurry low quality", "seed=3", "steps=5"], tmp_path)
    theirs = diffusers_sdxl(base_pipe, 3, negative_prompt="blurry low quality", num_inference_steps=5)
    moved = diffusers_sdxl(base_pipe, 3, num_inference_steps=5)
    assert_parity(ours, theirs, moved)


def test_sdxl_empty_negative_prompt_gives_zero_embeddings(base_pipe, tmp_path):
    ours = sdflow_images("sdxl", [f"prompt={PROMPT}", "seed=4", "steps=5"], tmp_path)
    theirs = diffusers_sdxl(base_pipe, 4, num_inference_steps=5)
    # An encoded empty prompt instead of zeros: what force_zeros_for_empty_prompt changes.
    moved = diffusers_sdxl(base_pipe, 4, negative_prompt="", num_inference_steps=5)
    assert_parity(ours, theirs, moved)


def test_sdxl_size_and_crop_conditioning_matches(base_pipe, tmp_path):
    ours = sdflow_images("sdxl", [f"prompt={PROMPT}", "original_width=96", "original_height=128", "crop_top=8",
                                  "crop_left=4", "seed=5", "steps=5"], tmp_path)
    theirs = diffusers_sdxl(base_pipe, 5, original_size=(128, 96), crops_coords_top_left=(8, 4), num_inference_steps=5)
    moved = diffusers_sdxl(base_pipe, 5, num_inference_steps=5)
    assert_parity(ours, theirs, moved)


def test_sdxl_without_cfg_matches(base_pipe, tmp_path):
    ours = sdflow_images("sdxl", [f"prompt={PROMPT}", "guidance=1.0", "seed=6", "steps=5"], tmp_path)
    theirs = diffusers_sdxl(base_pipe, 6, guidance_scale=1.0, num_inference_steps=5)
    moved = diffusers_sdxl(base_pipe, 6, guidance_scale=5.0, num_inference_steps=5)
    assert_parity(ours, theirs, moved)


def diffusers_chain(base_pipe, refiner_pipe, seed, split, steps=6, refiner_kwargs=None, **kwargs):
    kwargs.setdefault("guidance_scale", 7.5)
    latents = base_pipe(prompt=PROMPT, height=64, width=64, num_inference_steps=steps, denoising_end=split,
                        generator=generators([seed]), output_type="latent", **kwargs).images
    return refiner_pipe(prompt=PROMPT, image=latents, num_inference_steps=steps, denoising_start=split,
                        generator=generators([seed]), output_type="np", **kwargs, **(refiner_kwargs or {})).images


def test_sdxl_refine_matches_base_then_refiner_and_loads_shared_parts_once(base_pipe, refiner_pipe, tmp_path):
    cache = ComponentCache()
    ours = sdflow_images("sdxl_refine", [f"prompt={PROMPT}", "negative_prompt=blurry", "seed=7", "steps=6",
                                         "denoising_end=0.8"], tmp_path, cache=cache)
    theirs = diffusers_chain(base_pipe, refiner_pipe, 7, 0.8, negative_prompt="blurry")
    moved = diffusers_chain(base_pipe, refiner_pipe, 7, 0.6, negative_prompt="blurry")
    assert_parity(ours, theirs, moved)
    loaded = [key[1] for key in cache.loaded_keys]
    assert loaded.count("vae") == 1 and loaded.count("text_encoder_2") == 1, loaded
    assert loaded.count("unet") == 2  # the base's and the refiner's


def test_sdxl_refine_aesthetic_score_reaches_the_refiner(base_pipe, refiner_pipe, tmp_path):
    ours = sdflow_images("sdxl_refine", [f"prompt={PROMPT}", "seed=8", "steps=6", "denoising_end=0.5",
                                         "aesthetic_score=9.0", "negative_aesthetic_score=1.0"], tmp_path)
    # Only the refiner reads aesthetic scores (the base's time ids hold a target size instead).
    theirs = diffusers_chain(base_pipe, refiner_pipe, 8, 0.5,
                             refiner_kwargs={"aesthetic_score": 9.0, "negative_aesthetic_score": 1.0})
    moved = diffusers_chain(base_pipe, refiner_pipe, 8, 0.5)
    assert_parity(ours, theirs, moved)


MISWIRED = """
description: SDXL pieces wired to an SD1 UNet
nodes:
  xl:
    type: load_model
    source: builtin:tiny-sdxl
  sd1:
    type: load_model
    source: builtin:tiny
  prompt:
    type: {prompt_type}
    text_encoder: {prefix}.text_encoder
    tokenizer: {prefix}.tokenizer{extra}
    prompt: a cat
  noise:
    type: init_latents
    vae: sd1.vae
    width: 64
    height: 64
    seed: 1
  denoise:
    type: denoise
    unet: {unet}
    scheduler: sd1.scheduler
    embeddings: prompt.embeddings
    latents: noise.latents
    steps: 2
"""


def run_miswired(tmp_path, **fields):
    flow = tmp_path / "miswired.yaml"
    flow.write_text(MISWIRED.format(**fields))
    cache = ComponentCache()
    with pytest.raises(ValidationError) as excinfo:
        run_workflow(str(flow), [], output_dir=tmp_path / "out", cache=cache)
    assert cache.stats.loads == 0
    return str(excinfo.value)


def test_sdxl_embeddings_into_an_sd1_unet_is_caught_naming_both_nodes(tmp_path):
    message = run_miswired(tmp_path, prompt_type="encode_prompt_sdxl", prefix="xl", unet="sd1.unet",
                           extra="\n    text_encoder_2: xl.text_encoder_2\n    tokenizer_2: xl.tokenizer_2")
    assert "node 'denoise', field 'embeddings'" in message
    assert "'sd1.unet' attends to 32-wide" in message and "'prompt.embeddings' gives 64-wide" in message


def test_sd1_embeddings_into_an_sdxl_unet_lack_its_added_conditioning(tmp_path):
    # The SDXL refiner's UNet attends to 32-wide text like SD1's, so only its "text_time" embedding tells.
    flow_text = MISWIRED.replace("builtin:tiny-sdxl", "builtin:tiny-sdxl-refiner")
    flow = tmp_path / "refiner_unet.yaml"
    flow.write_text(flow_text.format(prompt_type="encode_prompt", prefix="sd1", unet="xl.unet", extra=""))
    with pytest.raises(ValidationError) as excinfo:
        run_workflow(str(flow), [], output_dir=tmp_path / "out", cache=ComponentCache())
    message = str(excinfo.value)
    assert "node 'denoise', field 'unet'" in message and "'xl.unet' is an SDXL UNet" in message
    assert "'prompt.embeddings' has none: use encode_prompt_sdxl" in message and "sdxl_condition" in message


@pytest.mark.parametrize("workflow", ["sdxl", "sdxl_refine"])
def test_sdxl_workflows_on_the_default_sd1_model_say_which_model_they_need(workflow):
    with pytest.raises(ValidationError) as excinfo:
        run_workflow(workflow, ["model=tiny"], cache=ComponentCache())
    message = str(excinfo.value)
    assert "no 'text_encoder_2' component" in message
    assert "model=tiny_sdxl" in message and "model=sdxl" in message and "model.path=" in message


def test_force_zeros_must_match_the_model(tmp_path):
    with pytest.raises(ValidationError, match="sets true in its model_index.json"):
        run_workflow("sdxl", ["model=tiny_sdxl", "force_zeros_for_empty_prompt=false"], cache=ComponentCache())


def test_sdxl_refine_with_a_second_order_scheduler_matches(base_pipe, refiner_pipe, tmp_path):
    # Heun evaluates twice per step: the refiner's start is moved so it never begins between the two.
    ours = sdflow_images("sdxl_refine", [f"prompt={PROMPT}", "scheduler=heun", "seed=9", "steps=4",
                                         "denoising_end=0.7"], tmp_path)
    originals = base_pipe.scheduler, refiner_pipe.scheduler
    try:
        base_pipe.scheduler = diffusers.HeunDiscreteScheduler.from_config(originals[0].config)
        refiner_pipe.scheduler = diffusers.HeunDiscreteScheduler.from_config(originals[1].config)
        theirs = diffusers_chain(base_pipe, refiner_pipe, 9, 0.7, steps=4)
    finally:
        base_pipe.scheduler, refiner_pipe.scheduler = originals
    moved = diffusers_chain(base_pipe, refiner_pipe, 9, 0.7, steps=4)  # the models' Euler
    assert_parity(ours, theirs, moved)
