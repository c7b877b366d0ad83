"""Another VAE in place of the model's (``vae=FOLDER|HUB_ID|FILE.safetensors``): parity with StableDiffusionPipeline
given that VAE; a VAE of another family is named before anything loads."""

from __future__ import annotations

import json

import diffusers
import pytest
import torch
from safetensors.torch import load_file, save_file

from original_layout import vae_to_original
from parity import as_nhwc, assert_parity, generators, sd_pipeline
from sdflow.api import run_workflow
from sdflow.engine import ValidationError
from sdflow.models.builtin import builtin_model
from sdflow.models.tiny import make_vae
from sdflow.nodes.records import ModelLoad


@pytest.fixture(scope="module")
def vaes(tmp_path_factory):
    """Another tiny SD1-family VAE, as a diffusers folder and as an A1111-style single file."""
    folder = tmp_path_factory.mktemp("vaes")
    make_vae(seed=99).save_pretrained(folder / "my-vae")
    config = json.loads((folder / "my-vae" / "config.json").read_text())
    state = vae_to_original(load_file(folder / "my-vae" / "diffusion_pytorch_model.safetensors"), config)
    save_file(state, str(folder / "my-vae.safetensors"))
    return folder / "my-vae", folder / "my-vae.safetensors"


@pytest.fixture(scope="module")
def pipe(tiny_sd):
    return sd_pipeline(tiny_sd)


def diffusers_image(pipe, vae=None):
    original = pipe.vae
    pipe.vae = vae if vae is not None else original
    try:
        return pipe(prompt="a red cat", num_inference_steps=4, guidance_scale=7.5, height=64, width=64,
                    generator=generators([3]), output_type="np").images
    finally:
        pipe.vae = original


def sdflow_image(vae, tmp_path):
    result = run_workflow("text2img", ["model=tiny", f"vae={vae}", "prompt=a red cat", "seed=3", "steps=4"],
                          output_dir=tmp_path)
    return as_nhwc(result.outputs["decode"]["image"].pixels), result


def test_a_vae_folder_matches_the_pipeline_given_it(pipe, vaes, tmp_path):
    ours, result = sdflow_image(vaes[0], tmp_path)
    theirs = diffusers_image(pipe, diffusers.AutoencoderKL.from_pretrained(vaes[0]))
    assert_parity(ours, theirs, diffusers_image(pipe))
    assert result.record.of(ModelLoad)["vae"].sha256  # recorded for reproduce


def test_a_single_file_vae_matches_from_single_file(pipe, vaes, tiny_sd, tmp_path):
    ours, _ = sdflow_image(vaes[1], tmp_path)
    vae = diffusers.AutoencoderKL.from_single_file(str(vaes[1]), config=str(tiny_sd), subfolder="vae",
                                                   local_files_only=True)
    assert_parity(ours, diffusers_image(pipe, vae), diffusers_image(pipe))


def test_a_vae_of_another_family_is_named(vaes, tmp_path):
    sdxl_vae = builtin_model("tiny-sdxl") / "vae"
    with pytest.raises(ValidationError, match=r"scaling 0.13025 = SDXL\) does not fit the model.*0.18215 = SD 1.x/2.x"):
        run_workflow("text2img", ["model=tiny", f"vae={sdxl_vae}", "prompt=a"])
    flux_like = tmp_path / "vae16.safetensors"
    save_file({"quant_conv.weight": torch.zeros(32, 32, 1, 1)}, str(flux_like))
    with pytest.raises(ValidationError, match=r"16 latent channels.*4 latent channels"):
        run_workflow("text2img", ["model=tiny", f"vae={flux_like}", "prompt=a"])
