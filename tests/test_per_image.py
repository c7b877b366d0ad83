"""Per-image values in one batch: prompt, negative prompt, seed and guidance lists (one value per image).

Parity with diffusers' StableDiffusionPipeline and StableDiffusionXLPipeline given lists of prompts and of
generators; a batch equals its images made one by one; wrong list lengths are validation errors; every
PNG records its own values. fp32, CPU, the tiny models, max abs diff <= 1e-4.
"""

from __future__ import annotations

import json

import diffusers
import numpy as np
import pytest
from PIL import Image

from parity import as_nhwc, assert_parity, generators, max_diff, sd_pipeline
from sdflow.api import run_workflow
from sdflow.engine import ValidationError
from sdflow.nodes.records import PromptEncoding

PROMPTS = ["a red circle", "a blue square on the left", "a lighthouse at dusk"]
NEGATIVES = ["blurry", "low quality", ""]
SEEDS = [3, 11, 7]


def listed(values) -> str:
    """A Hydra list override value: ["a red circle","blurry"]."""
    return "[" + ",".join(json.dumps(v) for v in values) + "]"


def sdflow_run(workflow, overrides, tmp_path, model="tiny"):
    return run_workflow(workflow, [f"model={model}", "steps=4"] + overrides, output_dir=tmp_path)


def pixels(result, node="decode"):
    return as_nhwc(result.outputs[node]["image"].pixels)


@pytest.fixture(scope="module")
def sd_pipe(tiny_sd):
    return sd_pipeline(tiny_sd)


def diffusers_batch(pipe, prompts, negatives, seeds, guidance=7.5):
    return pipe(prompt=prompts, negative_prompt=negatives, num_inference_steps=4, guidance_scale=guidance, height=64,
                width=64, generator=generators(seeds), output_type="np").images


def test_prompt_lists_match_stable_diffusion_pipeline_given_lists(sd_pipe, tmp_path):
    result = sdflow_run("text2img", [f"prompt={listed(PROMPTS)}", f"negative_prompt={listed(NEGATIVES)}",
                                     f"seed={listed(SEEDS)}"], tmp_path)
    ours = pixels(result)
    theirs = diffusers_batch(sd_pipe, PROMPTS, NEGATIVES, SEEDS)
    assert ours.shape[0] == 3
    moved = diffusers_batch(sd_pipe, [PROMPTS[0], "a green triangle", PROMPTS[2]], NEGATIVES, SEEDS)
    assert_parity(ours, theirs, moved)
    moved_negative = diffusers_batch(sd_pipe, PROMPTS, ["blurry", "blurry", ""], SEEDS)
    assert max_diff(ours[1], moved_negative[1]) > 100 * 1e-4  # the negative list is per image too


def test_a_batch_of_prompts_equals_its_images_made_one_by_one(tmp_path):
    batch = pixels(sdflow_run("text2img", [f"prompt={listed(PROMPTS)}", f"negative_prompt={listed(NEGATIVES)}",
                                           f"seed={listed(SEEDS)}", "scheduler=euler_a"], tmp_path))

    def single(prompt, negative, seed):
        return pixels(sdflow_run("text2img", [f"prompt={prompt}", f"negative_prompt={negative}", f"seed={seed}",
                                              "scheduler=euler_a"], tmp_path))

    singles = np.concatenate([single(*args) for args in zip(PROMPTS, NEGATIVES, SEEDS)])
    assert max_diff(batch, singles) <= 1e-4
    assert max_diff(batch[1:2], single("a green triangle", NEGATIVES[1], SEEDS[1])) > 100 * 1e-4


def test_hydra_list_syntax_and_a_single_value_broadcast(tmp_path):
    result = sdflow_run("text2img", ["prompt=[a red circle, a blue square]", "seed=[1,2]"], tmp_path)
    embeddings = result.outputs["prompt"]["embeddings"]
    assert embeddings.prompts == ["a red circle", "a blue square"] and embeddings.negative_prompts == ["", ""]
    assert embeddings.positive.shape[0] == 2
    one = sdflow_run("text2img", ["prompt=[a red circle]", "seed=[1,2]"], tmp_path)
    scalar = sdflow_run("text2img", ["prompt=a red circle", "seed=[1,2]"], tmp_path)
    assert max_diff(pixels(one), pixels(scalar)) == 0.0  # a list of one is the single value


def test_each_distinct_text_is_encoded_once(tmp_path):
    result = sdflow_run("text2img", [f"prompt={listed(['a red circle', 'a blue square', 'a red circle'])}",
                                     "negative_prompt=a red circle", "seed=[1,2,3]", "steps=1"], tmp_path)
    assert result.record.of(PromptEncoding)["prompt"].texts_encoded == 2
    embeddings = result.outputs["prompt"]["embeddings"]
    assert (embeddings.positive[0] == embeddings.positive[2]).all()
    assert (embeddings.positive[0] == embeddings.negative[1]).all()


def test_guidance_list_equals_each_image_made_with_its_own_guidance(tmp_path):
    guidances = [1.0, 5.0, 9.0]  # 1.0: CFG off for the first image only
    common = [f"prompt={PROMPTS[2]}", "negative_prompt=blurry", f"seed={listed(SEEDS)}"]
    batch = pixels(sdflow_run("text2img", common + [f"guidance={listed(guidances)}"], tmp_path))
    singles = np.concatenate([
        pixels(sdflow_run("text2img", [f"prompt={PROMPTS[2]}", "negative_prompt=blurry", f"seed={seed}",
                                       f"guidance={guidance}"], tmp_path))
        for seed, guidance in zip(SEEDS, guidances)])
    assert max_diff(batch, singles) <= 1e-4
    moved = pixels(sdflow_run("text2img", common + ["guidance=[5.0,5.0,9.0]"], tmp_path))
    assert max_diff(batch[:1], moved[:1]) > 100 * 1e-4  # image 0 really ran without CFG
    assert max_diff(batch[1:], moved[1:]) <= 1e-4  # and the others did not notice


def test_guidance_list_with_every_image_off_cfg_skips_the_unconditional_half(sd_pipe, tmp_path):
    ours = pixels(sdflow_run("text2img", [f"prompt={listed(PROMPTS[:2])}", "guidance=[1.0,0.5]", "seed=[3,11]"],
                             tmp_path))
    theirs = diffusers_batch(sd_pipe, PROMPTS[:2], None, [3, 11], guidance=1.0)
    assert_parity(ours, theirs, diffusers_batch(sd_pipe, PROMPTS[:2], None, [3, 11], guidance=3.0))


def test_guidance_list_with_safe_latent_diffusion_equals_single_runs(tmp_path):
    common = ["prompt=a red castle at dusk", "safety_concept=a black cat", "sld_warmup_steps=1"]
    batch = pixels(sdflow_run("safe", common + ["seed=[3,4]", "guidance=[1.0,7.5]"], tmp_path))
    singles = np.concatenate([pixels(sdflow_run("safe", common + [f"seed={s}", f"guidance={g}"], tmp_path))
                              for s, g in [(3, 1.0), (4, 7.5)]])
    assert max_diff(batch, singles) <= 1e-4


def test_every_png_records_its_own_prompt_seed_and_guidance(tmp_path):
    result = sdflow_run("text2img", [f"prompt={listed(PROMPTS[:2])}", "negative_prompt=blurry", "seed=[4,9]",
                                     "guidance=[3.0,6.0]", "steps=1"], tmp_path)
    metas = []
    for path in result.saved:
        with Image.open(path) as image:
            metas.append(json.loads(image.text["sdflow"])["image"])
    assert [m["seed"] for m in metas] == [4, 9]
    assert [m["values"]["prompt.prompt"] for m in metas] == PROMPTS[:2]
    assert [m["values"]["prompt.negative_prompt"] for m in metas] == ["blurry", "blurry"]
    assert [m["values"]["denoise.guidance"] for m in metas] == [3.0, 6.0]
    assert "noise.seed" not in metas[0]["values"]  # seeds travel with the images


def test_images_take_slices_one_jobs_range(tmp_path):
    images = sdflow_run("text2img", ["seed=[1,2,3]", "steps=1"], tmp_path).outputs["safety"]["image"]
    part = images.take(1, 3)
    assert part.seeds == [2, 3] and part.pixels.shape[0] == 2 and part.flagged == images.flagged[1:3]
    assert (part.pixels == images.pixels[1:3]).all()


def problems(workflow, overrides):
    with pytest.raises(ValidationError) as caught:
        run_workflow(workflow, ["model=tiny"] + overrides)
    return [str(p) for p in caught.value.problems]


def test_a_prompt_list_longer_than_the_seeds_is_a_validation_error():
    (message,) = problems("text2img", [f"prompt={listed(PROMPTS)}", "seed=[1,2]"])
    assert "node 'prompt'" in message and "field 'prompt'" in message
    assert "expected 2 values" in message and "given a list of 3" in message and "${prompt}" in message


def test_prompt_lists_of_different_lengths_are_a_validation_error():
    (message,) = problems("text2img", [f"prompt={listed(PROMPTS[:2])}", f"negative_prompt={listed(NEGATIVES)}",
                                       "seed=[1,2,3]"])
    assert "node 'prompt'" in message and "field 'prompt'" in message
    assert "expected 3 values" in message and "given a list of 2" in message


def test_a_guidance_list_of_the_wrong_length_is_a_validation_error():
    (message,) = problems("text2img", ["guidance=[2.0,3.0,4.0]", "seed=[1,2]"])
    assert "node 'denoise'" in message and "field 'guidance'" in message
    assert "expected 2 values" in message and "given a list of 3" in message


def test_a_prompt_list_with_one_seed_says_how_many_images_there_are():
    (message,) = problems("text2img", [f"prompt={listed(PROMPTS[:2])}", "seed=5"])
    assert "expected a single value ('noise.latents' holds 1 image, one per seed; more seeds make more images)" in message
    assert "given a list of 2" in message


def test_a_seed_list_with_batch_size_is_a_conflict():
    (message,) = problems("text2img", ["seed=[1,2,3]", "batch_size=2"])
    assert "node 'noise'" in message and "field 'batch_size'" in message
    assert "conflicting settings" in message and "drop one" in message


def test_list_elements_are_checked_one_by_one():
    (message,) = problems("text2img", ["guidance=[2.0,-1.0]", "seed=[1,2]"])
    assert "field 'guidance'" in message and "list element 1 (-1.0)" in message and ">= 0.0" in message
    (message,) = problems("text2img", ["steps=[2,3]"])
    assert "field 'steps'" in message and "does not take a list" in message
    (message,) = problems("text2img", ["prompt=[]"])
    assert "field 'prompt'" in message and "empty list" in message


@pytest.fixture(scope="module")
def sdxl_pipe():
    from sdflow.models.builtin import builtin_model

    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(builtin_model("tiny-sdxl"), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_sdxl_prompt_list_matches_sdxl_pipeline_given_a_list(sdxl_pipe, tmp_path):
    prompts = PROMPTS[:2]
    ours = pixels(sdflow_run("sdxl", [f"prompt={listed(prompts)}", "seed=[5,6]"], tmp_path, model="tiny_sdxl"))

    def theirs(texts):
        return sdxl_pipe(prompt=texts, num_inference_steps=4, guidance_scale=7.5, height=64, width=64,
                         generator=generators([5, 6]), output_type="np").images

    assert_parity(ours, theirs(prompts), theirs([prompts[0], "a green triangle"]))


def test_sdxl_empty_negatives_in_a_list_are_zeros_as_each_image_alone(tmp_path):
    batch = pixels(sdflow_run("sdxl", [f"prompt={PROMPTS[0]}", f"negative_prompt={listed(['', 'blurry'])}",
                                       "seed=[5,6]"], tmp_path, model="tiny_sdxl"))
    singles = np.concatenate([pixels(sdflow_run("sdxl", [f"prompt={PROMPTS[0]}", f"negative_prompt={negative}",
                                                         f"seed={seed}"], tmp_path, model="tiny_sdxl"))
                              for negative, seed in [("", 5), ("blurry", 6)]])
    assert max_diff(batch, singles) <= 1e-4
