"""Parity with diffusers: text2img latents -> x2 latent upscale -> decode, against
StableDiffusionPipeline(output_type="latent") -> StableDiffusionLatentUpscalePipeline(image=latents).
fp32, CPU, the same tiny components and generators, max abs diff <= 1e-4."""

from __future__ import annotations

import dataclasses
import json
import shutil

import diffusers
import pytest
import torch

from parity import as_nhwc, assert_parity, generators, max_diff
from sdflow.api import run_workflow
from sdflow.engine import REGISTRY, ValidationError
from sdflow.nodes.records import LatentUpscale

PROMPT = "a lighthouse at dusk"


@pytest.fixture(scope="module")
def tiny_latent_upscaler():
    from sdflow.models.builtin import builtin_model

    return builtin_model("tiny-latent-upscale")


@pytest.fixture(scope="module")
def pipes(tiny_sd, tiny_latent_upscaler):
    sd = diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None, requires_safety_checker=False)
    upscaler = diffusers.StableDiffusionLatentUpscalePipeline.from_pretrained(tiny_latent_upscaler)
    sd.set_progress_bar_config(disable=True)
    upscaler.set_progress_bar_config(disable=True)
    return sd, upscaler


def diffusers_chain(pipes, seeds, guidance, steps=3, upscale_steps=3):
    """The two pipelines chained as diffusers documents it: the same generators continue into the upscaler."""
    sd, upscaler = pipes
    gens = generators(seeds)
    low_res = sd([PROMPT] * len(seeds), num_inference_steps=steps, height=64, width=64, generator=gens,
                 output_type="latent").images
    return upscaler(prompt=[PROMPT] * len(seeds), image=low_res, num_inference_steps=upscale_steps,
                    guidance_scale=guidance, generator=gens, output_type="np").images


def sdflow_chain(overrides, tmp_path):
    result = run_workflow("latent_upscale", ["model=tiny", f"prompt={PROMPT}", "steps=3", "upscale_steps=3"] + overrides,
                          output_dir=tmp_path)
    return result, as_nhwc(result.outputs["decode"]["image"].pixels)


@pytest.mark.parametrize("guidance, other", [(9.0, 1.0), (0.0, 9.0)])
def test_latent_upscale_matches_latent_upscale_pipeline_per_guidance(pipes, tmp_path, guidance, other):
    _, ours = sdflow_chain(["seed=3", f"upscale_guidance={guidance}"], tmp_path)
    theirs = diffusers_chain(pipes, [3], guidance)
    assert ours.shape == (1, 128, 128, 3)  # 64 px -> 32 latents -> x2 -> 64 latents -> 128 px
    assert_parity(ours, theirs, diffusers_chain(pipes, [3], other))


def test_latent_upscale_batch_of_two_seeds_matches(pipes, tmp_path):
    _, ours = sdflow_chain(["seed=[5,11]", "upscale_guidance=9.0"], tmp_path)
    theirs = diffusers_chain(pipes, [5, 11], 9.0)
    assert ours.shape[0] == 2
    assert_parity(ours, theirs, theirs[::-1].copy())
    assert_parity(ours[:1], theirs[:1], diffusers_chain(pipes, [6], 9.0))


def test_prompt_list_through_both_stages_matches_the_pipelines_given_the_list(pipes, tmp_path):
    prompts = ["a lighthouse at dusk", "a red circle"]
    sd, upscaler = pipes

    def theirs(texts):
        gens = generators([5, 11])
        low_res = sd(texts, num_inference_steps=3, height=64, width=64, generator=gens, output_type="latent").images
        return upscaler(prompt=texts, image=low_res, num_inference_steps=3, guidance_scale=9.0, generator=gens,
                        output_type="np").images

    listed = "[" + ",".join(f'"{p}"' for p in prompts) + "]"
    _, ours = sdflow_chain([f"prompt={listed}", "seed=[5,11]", "upscale_guidance=9.0"], tmp_path)
    assert_parity(ours, theirs(prompts), theirs([prompts[0], "a blue square"]))


def test_upscale_seed_of_its_own_matches_a_fresh_generator_for_the_upscaler(pipes, tmp_path):
    """upscale_seed: the upscaler's noise from a fresh generator, as diffusers runs the two pipelines given two."""
    sd, upscaler = pipes
    low_res = sd([PROMPT], num_inference_steps=3, height=64, width=64, generator=generators([3]),
                 output_type="latent").images
    theirs = upscaler(prompt=[PROMPT], image=low_res, num_inference_steps=3, guidance_scale=9.0,
                      generator=torch.Generator().manual_seed(8), output_type="np").images
    result, ours = sdflow_chain(["seed=3", "upscale_seed=8", "upscale_guidance=9.0"], tmp_path)
    assert_parity(ours, theirs, diffusers_chain(pipes, [3], 9.0))  # moved: the text2img generator continued
    assert result.record.of(LatentUpscale)["upscale"].seed == [8]
    # The image's own seed is the default: its generator continues into the upscaler (the chain diffusers documents).
    _, same = sdflow_chain(["seed=3", "upscale_seed=3", "upscale_guidance=9.0"], tmp_path)
    assert_parity(same, diffusers_chain(pipes, [3], 9.0), theirs)


def test_upscale_seeds_per_image_in_a_batch(pipes, tmp_path):
    sd, upscaler = pipes
    gens = generators([5, 11])
    low_res = sd([PROMPT] * 2, num_inference_steps=3, height=64, width=64, generator=gens, output_type="latent").images
    # image 0 keeps its own seed (its generator continues), image 1 gets a fresh one
    theirs = upscaler(prompt=[PROMPT] * 2, image=low_res, num_inference_steps=3, guidance_scale=9.0,
                      generator=[gens[0], torch.Generator().manual_seed(7)], output_type="np").images
    _, ours = sdflow_chain(["seed=[5,11]", "upscale_seed=[5,7]", "upscale_guidance=9.0"], tmp_path)
    assert_parity(ours, theirs, diffusers_chain(pipes, [5, 11], 9.0))
    assert_parity(ours[:1], diffusers_chain(pipes, [5, 11], 9.0)[:1])


def test_upscaler_depends_on_its_low_res_latents(pipes):
    """Guard against a blind test: the output must follow the latents it upscales, not just the seed."""
    _, upscaler = pipes
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    a = upscaler(prompt=PROMPT, image=latents, num_inference_steps=3, generator=generators([1]), output_type="np").images
    b = upscaler(prompt=PROMPT, image=latents.flip(-1), num_inference_steps=3, generator=generators([1]),
                 output_type="np").images
    assert max_diff(a, b) > 1e-2


def test_chain_hands_the_denoise_latents_over_without_decoding(tmp_path, monkeypatch):
    spec = REGISTRY["latent_upscale"]
    received = []

    def spy(ctx, **kwargs):
        received.append(kwargs["latents"])
        return spec.fn(ctx, **kwargs)

    monkeypatch.setitem(REGISTRY, "latent_upscale", dataclasses.replace(spec, fn=spy))
    result, _ = sdflow_chain(["seed=2"], tmp_path)
    handed = result.outputs["denoise"]["latents"]
    assert received == [handed] and received[0] is handed  # the very object denoise returned
    assert isinstance(handed.samples, torch.Tensor) and handed.samples.shape == (1, 4, 32, 32)
    # The only edge into the upscaler's latents input comes straight from denoise: nothing decodes in between.
    edges = [(src, data) for src, _, data in result.plan.graph.in_edges("upscale", data=True) if data["input"] == "latents"]
    assert edges == [("denoise", {"input": "latents", "output": "latents"})]
    assert result.outputs["upscale"]["latents"].samples.shape == (1, 4, 64, 64)


def test_latents_with_other_channels_fail_validation(tiny_sd, tmp_path, fresh_cache):
    """Latents from a 16-channel VAE (SD3-like) cannot feed an upscaler that takes 4 + 4 channels."""
    folder = tmp_path / "sixteen"
    shutil.copytree(tiny_sd, folder)
    for component, key in (("vae", "latent_channels"), ("unet", "in_channels")):
        path = folder / component / "config.json"
        config = json.loads(path.read_text())
        config[key] = 16
        path.write_text(json.dumps(config))
    with pytest.raises(ValidationError) as info:
        run_workflow("latent_upscale", ["model=tiny", f"model.path={folder}", "seed=0"], output_dir=tmp_path,
                     cache=fresh_cache)
    [problem] = [p for p in info.value.problems if p.node == "upscale"]
    assert problem.field == "latents"
    assert "8 input channels" in problem.message and "have 16 channels" in problem.message
    assert "'denoise.latents'" in problem.message and "'upscaler.unet'" in problem.message
    assert len(fresh_cache) == 0  # nothing loaded


def test_an_sd_model_as_latent_upscaler_fails_validation(tiny_sd, tmp_path, fresh_cache):
    with pytest.raises(ValidationError) as info:
        run_workflow("latent_upscale", ["model=tiny", "model.latent_upscaler=builtin:tiny", "seed=0"],
                     output_dir=tmp_path, cache=fresh_cache)
    [problem] = info.value.problems
    assert (problem.node, problem.field) == ("upscale", "unet")
    assert "builtin:tiny" in problem.message and "stabilityai/sd-x2-latent-upscaler" in problem.message
    assert len(fresh_cache) == 0
