"""Parity with diffusers' StableDiffusionPipeline on an SD2-shaped model with a v-prediction scheduler (the sd2
and text2img workflows with model=tiny_sd2). fp32, CPU, max abs diff <= 1e-4. Each "moved" output uses the same
weights with prediction_type epsilon (or guidance_rescale off), so the tests fail if v-prediction is ignored."""

from __future__ import annotations

import diffusers
import pytest

from parity import as_nhwc, assert_parity, generators
from sdflow.api import run_workflow
from sdflow.nodes.scheduler import scheduler_class

PROMPT = "a photo of a green lighthouse"


@pytest.fixture(scope="module")
def tiny_sd2():
    from sdflow.models.builtin import builtin_model

    return builtin_model("tiny-sd2")


@pytest.fixture(scope="module")
def sd2_pipe(tiny_sd2):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd2, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdflow_images(workflow, tmp_path, overrides):
    result = run_workflow(workflow, ["model=tiny_sd2", f"prompt={PROMPT}"] + overrides, output_dir=tmp_path)
    return as_nhwc(result.outputs["decode"]["image"].pixels)


def diffusers_images(pipe, scheduler="model", prediction_type=None, seed=7, **kwargs):
    """No height/width: the pipeline's default (the UNet's sample size) is what the tiny_sd2 preset gives."""
    original = pipe.scheduler
    cls = scheduler_class(scheduler) or type(original)
    overrides = {"prediction_type": prediction_type} if prediction_type else {}
    pipe.scheduler = cls.from_config(original.config, **overrides)
    try:
        return pipe(prompt=PROMPT, num_inference_steps=5, guidance_scale=7.5, generator=generators([seed]),
                    output_type="np", **kwargs).images
    finally:
        pipe.scheduler = original


def test_tiny_sd2_is_a_v_prediction_model(sd2_pipe):
    assert sd2_pipe.scheduler.config.prediction_type == "v_prediction"
    assert sd2_pipe.unet.config.use_linear_projection and sd2_pipe.text_encoder.config.hidden_act == "gelu"


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_v_prediction_matches_pipeline_per_scheduler(sd2_pipe, tmp_path, scheduler):
    ours = sdflow_images("sd2", tmp_path, [f"scheduler={scheduler}", "seed=7", "steps=5"])
    theirs = diffusers_images(sd2_pipe, scheduler)
    assert ours.shape == (1, 96, 96, 3)  # the 768-class size, scaled down with the tiny model
    assert_parity(ours, theirs, diffusers_images(sd2_pipe, scheduler, prediction_type="epsilon"))


def test_text2img_workflow_runs_sd2_with_its_own_scheduler(sd2_pipe, tmp_path):
    ours = sdflow_images("text2img", tmp_path, ["seed=7", "steps=5"])
    theirs = diffusers_images(sd2_pipe)
    assert_parity(ours, theirs, diffusers_images(sd2_pipe, prediction_type="epsilon"))


def test_guidance_rescale_matches_pipeline(sd2_pipe, tmp_path):
    ours = sdflow_images("sd2", tmp_path, ["scheduler=ddim", "seed=7", "steps=5", "guidance_rescale=0.7"])
    theirs = diffusers_images(sd2_pipe, "ddim", guidance_rescale=0.7)
    assert_parity(ours, theirs, diffusers_images(sd2_pipe, "ddim", guidance_rescale=0.0))
