"""Memory modes: runtime.vae_tiling and runtime.vae_slicing, against diffusers' own (AutoencoderKL.enable_tiling /
enable_slicing on the pipeline's VAE), fp32 CPU, the same tiny components. Tiling changes pixels (tiles blend at
their seams), so it is held to diffusers' tiled result and shown to move the image; slicing changes none."""

from __future__ import annotations

import diffusers
import pytest

from parity import as_nhwc, assert_parity, generators, max_diff, sd_pipeline
from sdflow.api import run_workflow
from sdflow.engine import ComponentCache, ValidationError
from sdflow.nodes.runtime_facts import check_runtime

PROMPT = "a lighthouse at dusk"


@pytest.fixture(scope="module")
def sd_pipe(tiny_sd):
    return sd_pipeline(tiny_sd)


def diffusers_images(pipe, tiling=False, slicing=False, **kwargs):
    pipe.vae.use_tiling, pipe.vae.use_slicing = tiling, slicing
    try:
        return pipe(prompt=[PROMPT] * len(kwargs["generator"]), output_type="np", num_inference_steps=2, **kwargs).images
    finally:
        pipe.vae.use_tiling = pipe.vae.use_slicing = False


def test_vae_tiling_matches_diffusers_tiled_decode_and_moves_the_image(sd_pipe, tmp_path):
    # 128 px: 64 latents, over the tiny VAE's 32-latent tile, so the decode goes in blended tiles
    args = ["model=tiny", f"prompt={PROMPT}", "seed=3", "steps=2", "width=128", "height=128", "runtime.vae_tiling=true"]
    result = run_workflow("text2img", args, output_dir=tmp_path)
    theirs = diffusers_images(sd_pipe, tiling=True, height=128, width=128, generator=generators([3]))
    untiled = diffusers_images(sd_pipe, height=128, width=128, generator=generators([3]))
    assert_parity(as_nhwc(result.outputs["decode"]["image"].pixels), theirs, untiled)
    assert result.record.runtime["vae_tiling"] is True and result.record.runtime["attention"] == "sdpa"


def test_vae_slicing_decodes_one_image_at_a_time_with_the_same_pixels(sd_pipe, tmp_path, monkeypatch):
    decoded_batches = []
    original = diffusers.AutoencoderKL._decode

    def counting(self, z, *args, **kwargs):
        decoded_batches.append(z.shape[0])
        return original(self, z, *args, **kwargs)

    monkeypatch.setattr(diffusers.AutoencoderKL, "_decode", counting)
    base = ["model=tiny", f"prompt={PROMPT}", "seed=[4,5]", "steps=2", "runtime.output_cache=false"]
    cache = ComponentCache()
    whole = run_workflow("text2img", base, output_dir=tmp_path / "whole", cache=cache)
    assert decoded_batches == [2]
    sliced = run_workflow("text2img", base + ["runtime.vae_slicing=true"], output_dir=tmp_path / "sliced", cache=cache)
    assert decoded_batches == [2, 1, 1]
    ours = as_nhwc(sliced.outputs["decode"]["image"].pixels)
    assert max_diff(ours, as_nhwc(whole.outputs["decode"]["image"].pixels)) <= 1e-6
    theirs = diffusers_images(sd_pipe, slicing=True, height=64, width=64, generator=generators([4, 5]))
    other = diffusers_images(sd_pipe, slicing=True, height=64, width=64, generator=generators([6, 7]))
    assert_parity(ours, theirs, other)
    # the modes compose with the component cache: one VAE, loaded once, left as loaded for the next run
    (vae_key,) = [key for key in cache.keys() if "vae" in key]
    vae = cache.get(vae_key, load=lambda: pytest.fail("the VAE was not kept"))
    assert not vae.use_slicing and not vae.use_tiling


@pytest.mark.parametrize("mode", ["vae_slicing", "vae_tiling", "attention_slicing"])
def test_a_mode_that_is_not_true_or_false_is_refused_before_anything_loads(tmp_path, mode):
    assert check_runtime({mode: "maybe"})[0].field == f"runtime.{mode}"
    with pytest.raises(ValidationError, match=f"runtime\\.{mode}"):
        run_workflow("text2img", ["model=tiny", f"runtime.{mode}=maybe"], output_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("slicing", ["max", 2])
def test_attention_slicing_matches_diffusers_and_puts_the_unets_processors_back(sd_pipe, tmp_path, monkeypatch, slicing):
    from diffusers.models.attention_processor import SlicedAttnProcessor

    sliced_calls = []
    original = SlicedAttnProcessor.__call__

    def counting(self, *args, **kwargs):
        sliced_calls.append(self.slice_size)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SlicedAttnProcessor, "__call__", counting)
    cache = ComponentCache()
    base = ["model=tiny", f"prompt={PROMPT}", "seed=6", "steps=2", "runtime.output_cache=false"]
    result = run_workflow("text2img", base + [f"runtime.attention_slicing={slicing}"], output_dir=tmp_path / "s",
                          cache=cache)
    assert sliced_calls and set(sliced_calls) == {1 if slicing == "max" else slicing}
    assert result.record.runtime["attention"] == f"sliced ({slicing})"
    (unet_key,) = [key for key in cache.keys() if key[1] == "unet"]
    unet = cache.get(unet_key, load=lambda: pytest.fail("the UNet was not kept"))
    assert not any(isinstance(p, SlicedAttnProcessor) for p in unet.attn_processors.values())  # put back
    sd_pipe.unet.set_attention_slice(slicing)
    try:
        theirs = diffusers_images(sd_pipe, height=64, width=64, generator=generators([6]))
    finally:
        sd_pipe.unet.set_default_attn_processor()
    other = diffusers_images(sd_pipe, height=64, width=64, generator=generators([7]))
    assert_parity(as_nhwc(result.outputs["decode"]["image"].pixels), theirs, other)
    plain = run_workflow("text2img", base, output_dir=tmp_path / "plain", cache=cache)
    assert max_diff(as_nhwc(plain.outputs["decode"]["image"].pixels),
                    as_nhwc(result.outputs["decode"]["image"].pixels)) <= 1e-5  # slicing changes no pixel
    assert plain.record.runtime["attention"] == "sdpa"
