"""Parity with diffusers' StableDiffusionControlNetPipeline (one ControlNet, two through MultiControlNetModel
(workflow controlnet_multi),
a start/end window, guess mode, per-image control images), fp32, CPU, max abs diff <= 1e-4.

The ControlNets are made by ControlNetModel.from_unet from the tiny UNet, their zero layers given random weights
(sdflow.models.tiny_controlnet) so the control image moves the output, saved to disk and loaded by the workflow.
"""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
from PIL import Image

from parity import as_nhwc, assert_parity, generators
from sdflow.api import run_workflow

PROMPT = "a red circle on the left"
STEPS = 4


@pytest.fixture(scope="module")
def controlnets(tiny_sd, tmp_path_factory):
    from sdflow.models.tiny_controlnet import build_controlnet

    folder = tmp_path_factory.mktemp("controlnets")
    return [build_controlnet(tiny_sd, folder / f"cn{i}", seed=40 + i) for i in (0, 1)]


@pytest.fixture(scope="module")
def control_files(tmp_path_factory):
    """Two control maps of another size than the output (48x40: the processor resizes them): noise, and a white
    disc on black."""
    folder = tmp_path_factory.mktemp("control_images")
    noise = np.random.default_rng(5).uniform(0, 255, (40, 48, 3))
    yy, xx = np.mgrid[0:40, 0:48]
    disc = np.repeat((255 * (np.hypot(xx - 30, yy - 15) < 12))[..., None], 3, axis=-1)
    paths = [folder / "control0.png", folder / "control1.png"]
    for path, array in zip(paths, (noise, disc)):
        Image.fromarray(array.astype(np.uint8)).save(path)
    return paths


def pipeline(tiny_sd, controlnets):
    nets = [diffusers.ControlNetModel.from_pretrained(c) for c in controlnets]
    pipe = diffusers.StableDiffusionControlNetPipeline.from_pretrained(
        tiny_sd, controlnet=nets[0] if len(nets) == 1 else nets, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe(tiny_sd, controlnets):
    return pipeline(tiny_sd, controlnets[:1])


def theirs(pipe, images, seeds=(3,), **kwargs):
    return pipe(prompt=PROMPT, image=images, width=64, height=64, num_inference_steps=STEPS, guidance_scale=7.5,
                generator=generators(seeds), output_type="np", **kwargs).images


def ours(workflow, *overrides, output_dir):
    result = run_workflow(str(workflow), ["model=tiny", f"prompt={PROMPT}", f"steps={STEPS}", "guidance=7.5",
                                          *overrides], output_dir=output_dir)
    return as_nhwc(result.outputs["decode"]["image"].pixels)


def test_controlnet_matches_controlnet_pipeline(pipe, controlnets, control_files, tmp_path):
    image = Image.open(control_files[0])
    got = ours("controlnet", f"controlnet={controlnets[0]}", f"control_image={control_files[0]}", "seed=3",
               output_dir=tmp_path)
    want = theirs(pipe, image)
    off = theirs(pipe, image, controlnet_conditioning_scale=0.0)  # the ControlNet matters
    assert_parity(got, want, off)


def test_conditioning_scale_and_window_match_controlnet_pipeline(pipe, controlnets, control_files, tmp_path):
    image = Image.open(control_files[0])
    got = ours("controlnet", f"controlnet={controlnets[0]}", f"control_image={control_files[0]}", "seed=3",
               "control_scale=0.6", "control_start=0.25", "control_end=0.75", output_dir=tmp_path)
    want = theirs(pipe, image, controlnet_conditioning_scale=0.6, control_guidance_start=0.25,
                  control_guidance_end=0.75)
    whole = theirs(pipe, image, controlnet_conditioning_scale=0.6)  # the window matters
    assert_parity(got, want, whole)


def test_guess_mode_and_per_image_control_images_match_controlnet_pipeline(pipe, controlnets, control_files,
                                                                           tmp_path):
    images = [Image.open(p) for p in control_files]
    got = ours("controlnet", f"controlnet={controlnets[0]}", f"control_image=[{control_files[0]},{control_files[1]}]",
               "seed=[3,4]", "guess_mode=true", "prompt=[a red circle,a blue square]", output_dir=tmp_path)
    want = pipe(prompt=["a red circle", "a blue square"], image=images, width=64, height=64, num_inference_steps=STEPS,
                guidance_scale=7.5, generator=generators([3, 4]), output_type="np", guess_mode=True).images
    swapped = pipe(prompt=["a red circle", "a blue square"], image=images[::-1], width=64, height=64,
                   num_inference_steps=STEPS, guidance_scale=7.5, generator=generators([3, 4]), output_type="np",
                   guess_mode=True).images  # each image's own control image matters
    assert_parity(got, want, swapped)


def test_two_controlnets_match_multicontrolnet_pipeline(tiny_sd, controlnets, control_files, tmp_path):
    images = [Image.open(p) for p in control_files]
    multi = pipeline(tiny_sd, controlnets)
    got = ours("controlnet_multi", f"controlnet={controlnets[0]}", f"control_image={control_files[0]}", "seed=3",
               f"controlnet_2={controlnets[1]}", f"control_image_2={control_files[1]}", "control_scale_2=0.5",
               "control_end_2=0.5", output_dir=tmp_path)
    want = theirs(multi, images, controlnet_conditioning_scale=[1.0, 0.5], control_guidance_start=[0.0, 0.0],
                  control_guidance_end=[1.0, 0.5])
    first_only = theirs(multi, images, controlnet_conditioning_scale=[1.0, 0.0])  # the second ControlNet matters
    assert_parity(got, want, first_only)
