"""Parity of the ControlNet workflows besides text2img with their diffusers pipelines, fp32, CPU, max abs diff
<= 1e-4: controlnet_img2img (StableDiffusionControlNetImg2ImgPipeline), controlnet_inpaint
(StableDiffusionControlNetInpaintPipeline, 9-channel and legacy 4-channel UNets) and sdxl_controlnet
(StableDiffusionXLControlNetPipeline). ControlNets come from ControlNetModel.from_unet on each tiny UNet."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
from PIL import Image

from parity import as_nhwc, assert_parity, generators, gradient_picture
from sdflow.api import run_workflow

PROMPT = "a red circle on the left"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("controlnet_variants")
    rng = np.random.default_rng(7)
    picture = gradient_picture(rng)
    yy, xx = np.mgrid[0:40, 0:48]
    disc = np.repeat((255 * (np.hypot(xx - 30, yy - 15) < 12))[..., None], 3, axis=-1)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[8:40, 16:48] = 255
    images = {"image": Image.fromarray(picture.astype(np.uint8)), "control": Image.fromarray(disc.astype(np.uint8)),
              "mask": Image.fromarray(mask, mode="L")}
    paths = {}
    for name, image in images.items():
        paths[name] = folder / f"{name}.png"
        image.save(paths[name])
    return images, paths


def controlnet_for(model_folder, folder):
    from sdflow.models.tiny_controlnet import build_controlnet

    return build_controlnet(model_folder, folder, seed=50)


def ours(workflow, model, controlnet, paths, *overrides, tmp_path):
    result = run_workflow(workflow, [f"model={model}", f"controlnet={controlnet}", f"control_image={paths['control']}",
                                     f"prompt={PROMPT}", "seed=5", "steps=4", *overrides], output_dir=tmp_path)
    return as_nhwc(result.outputs["decode"]["image"].pixels)


def loaded(pipeline_class, folder, controlnet, **kwargs):
    pipe = pipeline_class.from_pretrained(folder, controlnet=diffusers.ControlNetModel.from_pretrained(controlnet),
                                          **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_controlnet_img2img_matches_controlnet_img2img_pipeline(tiny_sd, files, tmp_path):
    images, paths = files
    controlnet = controlnet_for(tiny_sd, tmp_path / "cn")
    pipe = loaded(diffusers.StableDiffusionControlNetImg2ImgPipeline, tiny_sd, controlnet, safety_checker=None,
                  requires_safety_checker=False)
    got = ours("controlnet_img2img", "tiny", controlnet, paths, f"image={paths['image']}", "strength=0.75",
               "control_scale=0.8", tmp_path=tmp_path)

    def theirs(scale):
        return pipe(prompt=PROMPT, image=images["image"], control_image=images["control"], strength=0.75,
                    width=64, height=64, num_inference_steps=4, guidance_scale=7.5, controlnet_conditioning_scale=scale,
                    generator=generators([5]), output_type="np").images

    assert_parity(got, theirs(0.8), theirs(0.0))


@pytest.mark.parametrize("model, builtin, mode", [("tiny_inpaint", "tiny-inpaint", "concat"),
                                                  ("tiny", "tiny", "blend")])
def test_controlnet_inpaint_matches_controlnet_inpaint_pipeline(files, tmp_path, model, builtin, mode):
    from sdflow.models.builtin import builtin_model

    images, paths = files
    folder = builtin_model(builtin)
    controlnet = controlnet_for(folder, tmp_path / "cn")
    pipe = loaded(diffusers.StableDiffusionControlNetInpaintPipeline, folder, controlnet, safety_checker=None,
                  requires_safety_checker=False)
    got = ours("controlnet_inpaint", model, controlnet, paths, f"image={paths['image']}", f"mask={paths['mask']}",
               f"inpaint_mode={mode}", "strength=1.0", tmp_path=tmp_path)

    def theirs(scale):
        return pipe(prompt=PROMPT, image=images["image"], mask_image=images["mask"], control_image=images["control"],
                    width=64, height=64, strength=1.0, num_inference_steps=4, guidance_scale=7.5,
                    controlnet_conditioning_scale=scale, generator=generators([5]), output_type="np").images

    assert_parity(got, theirs(1.0), theirs(0.0))


def test_sdxl_controlnet_matches_sdxl_controlnet_pipeline(files, tmp_path):
    from sdflow.models.builtin import builtin_model

    images, paths = files
    folder = builtin_model("tiny-sdxl")
    controlnet = controlnet_for(folder, tmp_path / "cn")
    pipe = loaded(diffusers.StableDiffusionXLControlNetPipeline, folder, controlnet, add_watermarker=False)
    got = ours("sdxl_controlnet", "tiny_sdxl", controlnet, paths, "control_start=0.2", "guidance=5.0",
               tmp_path=tmp_path)

    def theirs(start, guess_mode=False):
        return pipe(prompt=PROMPT, image=images["control"], width=64, height=64, num_inference_steps=4,
                    guidance_scale=5.0, control_guidance_start=start, guess_mode=guess_mode,
                    generator=generators([5]), output_type="np").images

    assert_parity(got, theirs(0.2), theirs(1.0 - 1e-6))
    # guess mode: the ControlNet sees the prompt's half of the pooled embeddings and time ids alone
    guessed = ours("sdxl_controlnet", "tiny_sdxl", controlnet, paths, "guess_mode=true", "guidance=5.0",
                   tmp_path=tmp_path / "guess")
    assert_parity(guessed, theirs(0.0, guess_mode=True), theirs(0.0))
