"""Parity with diffusers' StableDiffusionInpaintPipeline: a 9-channel inpainting UNet (strength 1.0 and
0.75) and a plain 4-channel UNet in the pipeline's legacy blending mode. fp32, CPU, max abs diff <= 1e-4.
Plus the validation errors: a UNet of the wrong kind for the inpaint mode, a mask of another size."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import yaml
from PIL import Image

from parity import as_nhwc, assert_parity, generators, gradient_picture, max_diff
from sdflow.api import run_workflow
from sdflow.workflows import WORKFLOWS_DIR
from sdflow.engine import ValidationError
from sdflow.nodes.scheduler import scheduler_class

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def tiny_inpaint():
    from sdflow.models.builtin import builtin_model

    return builtin_model("tiny-inpaint")


def make_pipe(folder):
    pipe = diffusers.StableDiffusionInpaintPipeline.from_pretrained(folder, safety_checker=None,
                                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def inpaint_pipe(tiny_inpaint):
    return make_pipe(tiny_inpaint)


@pytest.fixture(scope="module")
def legacy_pipe(tiny_sd):
    return make_pipe(tiny_sd)


def box_mask(size, box):
    """White (repaint) inside ``box`` = (left, top, right, bottom), black elsewhere."""
    array = np.zeros((size[1], size[0]), dtype=np.uint8)
    left, top, right, bottom = box
    array[top:bottom, left:right] = 255
    return Image.fromarray(array, mode="L")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inpaint")
    rng = np.random.default_rng(1)
    array = gradient_picture(rng)
    images = {"image": Image.fromarray(array.astype(np.uint8)), "mask": box_mask((64, 64), (16, 8, 48, 40)),
              "other_mask": box_mask((64, 64), (0, 32, 64, 64)), "small_mask": box_mask((32, 32), (8, 8, 24, 24))}
    paths = {}
    for name, image in images.items():
        paths[name] = folder / f"{name}.png"
        image.save(paths[name])
    return images, paths


def sdflow_inpaint(model, paths, mask="mask", mode="concat", strength=1.0, seed=3, steps=6, scheduler="model"):
    result = run_workflow("inpaint", [f"model={model}", f"image={paths['image']}", f"mask={paths[mask]}",
                                      f"inpaint_mode={mode}", f"strength={strength}", f"prompt={PROMPT}",
                                      f"seed={seed}", f"steps={steps}", f"scheduler={scheduler}"],
                          output_dir=paths["image"].parent / "out")
    return as_nhwc(result.outputs["decode"]["image"].pixels)


def diffusers_inpaint(pipe, images, mask="mask", strength=1.0, seed=3, steps=6, scheduler="model"):
    original = pipe.scheduler
    if scheduler_class(scheduler) is not None:
        pipe.scheduler = scheduler_class(scheduler).from_config(original.config)
    try:
        # The pipeline's output size defaults to the UNet's sample size, not the image's: pass it.
        return pipe(prompt=PROMPT, image=images["image"], mask_image=images[mask], strength=strength, height=64,
                    width=64, num_inference_steps=steps, guidance_scale=7.5, generator=generators([seed]),
                    output_type="np").images
    finally:
        pipe.scheduler = original


# euler_a draws from each image's generator at every step, so it also checks the order of the draws
# before the loop (image latents, noise, masked-image latents).
@pytest.mark.parametrize("strength,scheduler", [(1.0, "model"), (0.75, "model"), (0.75, "euler_a")])
def test_inpaint_9_channel_unet_matches_inpaint_pipeline(tiny_inpaint, inpaint_pipe, files, strength, scheduler):
    images, paths = files
    ours = sdflow_inpaint("tiny_inpaint", paths, strength=strength, scheduler=scheduler)
    theirs = diffusers_inpaint(inpaint_pipe, images, strength=strength, scheduler=scheduler)
    moved = diffusers_inpaint(inpaint_pipe, images, strength=0.5 if strength == 1.0 else 1.0, scheduler=scheduler)
    assert_parity(ours, theirs, moved)


def test_inpaint_mask_matters(tiny_inpaint, inpaint_pipe, files):
    images, paths = files
    ours = sdflow_inpaint("tiny_inpaint", paths, mask="other_mask", strength=0.75, seed=7)
    theirs = diffusers_inpaint(inpaint_pipe, images, mask="other_mask", strength=0.75, seed=7)
    moved = diffusers_inpaint(inpaint_pipe, images, mask="mask", strength=0.75, seed=7)
    assert_parity(ours, theirs, moved)


@pytest.mark.parametrize("strength,scheduler", [(1.0, "model"), (1.0, "euler"), (0.7, "model"), (0.7, "euler_a")])
def test_inpaint_4_channel_unet_legacy_blend_matches_inpaint_pipeline(legacy_pipe, files, strength, scheduler):
    images, paths = files
    ours = sdflow_inpaint("tiny", paths, mode="blend", strength=strength, seed=5, scheduler=scheduler)
    theirs = diffusers_inpaint(legacy_pipe, images, strength=strength, seed=5, scheduler=scheduler)
    moved = diffusers_inpaint(legacy_pipe, images, mask="other_mask", strength=strength, seed=5, scheduler=scheduler)
    assert_parity(ours, theirs, moved)


def test_inpaint_legacy_blend_keeps_the_image_outside_the_mask(legacy_pipe, files):
    # Blending resets the unmasked area to the image every step, so there the output follows the image,
    # not the prompt: two prompts differ inside the mask far more than outside it.
    images, _ = files
    a = diffusers_inpaint(legacy_pipe, images, strength=1.0)
    b = legacy_pipe(prompt="a blue square", image=images["image"], mask_image=images["mask"], strength=1.0, height=64,
                    width=64, num_inference_steps=6, generator=generators([3]), output_type="np").images
    inside = np.zeros((64, 64), dtype=bool)
    inside[8:40, 16:48] = True
    assert max_diff(a[:, inside], b[:, inside]) > 10 * max_diff(a[:, 44:, :], b[:, 44:, :])


def test_plain_unet_given_to_a_9_channel_inpaint_step_is_a_validation_error(tiny_sd, files):
    _, paths = files
    with pytest.raises(ValidationError) as err:
        sdflow_inpaint("tiny", paths, mode="concat")
    message = str(err.value)
    assert "node 'denoise'" in message and "'model.unet' takes 4 input channels" in message
    assert "'prepare.latents'" in message and "'prepare.condition'" in message
    assert "model=tiny_inpaint" in message and "inpaint_mode=blend" in message


def test_inpainting_unet_given_to_a_blend_step_is_a_validation_error(tiny_inpaint, files):
    _, paths = files
    with pytest.raises(ValidationError) as err:
        sdflow_inpaint("tiny_inpaint", paths, mode="blend")
    message = str(err.value)
    assert "'model.unet' takes 9 input channels" in message and "'prepare.latents'" in message
    assert "inpaint_mode=concat" in message


def test_mask_of_another_size_is_a_validation_error(tiny_inpaint, files):
    _, paths = files
    with pytest.raises(ValidationError) as err:
        sdflow_inpaint("tiny_inpaint", paths, mask="small_mask")
    message = str(err.value)
    assert "node 'prepare', field 'mask'" in message
    assert "'mask.mask' is 32x32" in message and "'input.image' is 64x64" in message


def test_inpaint_batch_of_two_seeds_equals_two_single_runs(tiny_inpaint, files):
    # Each image's latents, noise and masked-image latents come from its own generator (diffusers would
    # sample the one input image with the first generator only, so there batches of one are compared).
    _, paths = files
    common = ["model=tiny_inpaint", f"image={paths['image']}", f"mask={paths['mask']}", "strength=0.75", "steps=4",
              "scheduler=euler_a", f"prompt={PROMPT}"]
    out = paths["image"].parent / "out"
    batch = as_nhwc(run_workflow("inpaint", common + ["seed=[11,12]"], output_dir=out).outputs["decode"]["image"].pixels)
    singles = np.concatenate([as_nhwc(run_workflow("inpaint", common + [f"seed={s}"], output_dir=out)
                                      .outputs["decode"]["image"].pixels)
                              for s in (11, 12)])
    assert max_diff(batch, singles) <= 1e-4
    assert max_diff(batch[0], batch[1]) > 1e-2


def test_denoise_strength_other_than_the_prepared_one_is_a_validation_error(tiny_inpaint, files, tmp_path):
    _, paths = files
    workflow = yaml.safe_load((WORKFLOWS_DIR / "inpaint.yaml").read_text())
    workflow["nodes"]["denoise"]["strength"] = 0.5
    path = tmp_path / "inpaint_two_strengths.yaml"
    path.write_text(yaml.safe_dump(workflow, sort_keys=False))
    with pytest.raises(ValidationError) as err:
        run_workflow(str(path), ["model=tiny_inpaint", f"image={paths['image']}", f"mask={paths['mask']}",
                                 "strength=0.75"])
    assert "node 'denoise', field 'strength'" in str(err.value) and "'prepare.latents'" in str(err.value)


def test_vae_tiling_in_inpainting_matches_the_pipeline_with_a_tiled_vae(tiny_inpaint, inpaint_pipe, tmp_path):
    # 128 px: over the tiny VAE's 64 px tile, so the masked image is encoded and the result decoded in tiles
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))
    mask = box_mask((128, 128), (32, 16, 96, 80))
    image.save(tmp_path / "image.png")
    mask.save(tmp_path / "mask.png")
    ours = run_workflow("inpaint", ["model=tiny_inpaint", f"image={tmp_path / 'image.png'}",
                                    f"mask={tmp_path / 'mask.png'}", f"prompt={PROMPT}", "seed=3", "steps=3",
                                    "inpaint_mode=concat", "strength=1.0", "runtime.vae_tiling=true"], output_dir=tmp_path / "out")

    def theirs(tiled: bool):
        inpaint_pipe.vae.use_tiling = tiled
        try:
            return inpaint_pipe(prompt=PROMPT, image=image, mask_image=mask, height=128, width=128,
                                num_inference_steps=3, generator=generators([3]), output_type="np").images
        finally:
            inpaint_pipe.vae.use_tiling = False

    assert_parity(as_nhwc(ours.outputs["decode"]["image"].pixels), theirs(True), theirs(False))
