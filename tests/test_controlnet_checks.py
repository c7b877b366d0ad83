"""ControlNet mistakes caught before anything loads: a ControlNet of another family than the UNet (text width,
latent channels, SDXL or not, its image embedding's downscale), control image sizes and counts, scales and
start/end, and sources that cannot be used. Each ControlNet here is a config.json edited beside real weights:
validation reads only the config (and the weights' headers)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from sdflow.api import run_workflow
from sdflow.engine import ValidationError
from sdflow.workflows import WORKFLOWS_DIR


@pytest.fixture(scope="module")
def controlnet(tiny_sd, tmp_path_factory):
    from sdflow.models.tiny_controlnet import build_controlnet

    return build_controlnet(tiny_sd, tmp_path_factory.mktemp("controlnet") / "cn")


@pytest.fixture(scope="module")
def control_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("control") / "edges.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def edited(controlnet, tmp_path, **config):
    """A copy of ``controlnet`` whose config.json has ``config`` changed."""
    folder = tmp_path / "edited"
    shutil.copytree(controlnet, folder)
    data = json.loads((folder / "config.json").read_text())
    data.update(config)
    (folder / "config.json").write_text(json.dumps(data))
    return folder


def problems(*overrides, workflow="controlnet") -> str:
    with pytest.raises(ValidationError) as err:
        run_workflow(str(workflow), ["model=tiny", "steps=2", *overrides])
    return str(err.value)


def test_controlnet_of_another_text_width_is_refused(controlnet, control_png, tmp_path):
    other = edited(controlnet, tmp_path, cross_attention_dim=768)
    message = problems(f"controlnet={other}", f"control_image={control_png}")
    assert "node 'denoise', field 'control'" in message
    assert "attends to 768-wide text embeddings" in message and "to 32-wide ones" in message
    assert "another model family" in message


def test_controlnet_of_other_latent_channels_is_refused(controlnet, control_png, tmp_path):
    other = edited(controlnet, tmp_path, in_channels=9)
    message = problems(f"controlnet={other}", f"control_image={control_png}")
    assert "takes 9 latent channels, but 'noise.latents' gives 4" in message


def test_sdxl_controlnet_on_an_sd_unet_is_refused(controlnet, control_png, tmp_path):
    other = edited(controlnet, tmp_path, addition_embed_type="text_time")
    message = problems(f"controlnet={other}", f"control_image={control_png}")
    assert "is an SDXL ControlNet, but the UNet from 'lora.unet' is a non-SDXL UNet" in message


def test_controlnet_whose_embedding_misses_the_latent_size_is_refused(controlnet, control_png, tmp_path):
    # SD's ControlNets shrink the control image 8 times; the tiny VAE's latents are 1/2 of the image
    other = edited(controlnet, tmp_path, conditioning_embedding_out_channels=[16, 32, 96, 256])
    message = problems(f"controlnet={other}", f"control_image={control_png}")
    assert "node 'control', field 'controlnet'" in message
    assert "shrinks its control image 8 times" in message and "latents 1/2 of the image" in message


def test_control_image_size_must_fit_the_latents(controlnet, control_png):
    message = problems(f"controlnet={controlnet}", f"control_image={control_png}", "width=63")
    assert "node 'control_image', field 'width'" in message and "width 63 is not a multiple of 2" in message


def test_a_control_image_of_another_size_than_the_output_is_refused_before_loading(controlnet, control_png, tmp_path):
    # the control image made at 32x32 (its own width/height), the latents at the config's 64x64
    workflow = yaml.safe_load((WORKFLOWS_DIR / "controlnet.yaml").read_text())
    workflow["nodes"]["control_image"].update(width=32, height=32)
    path = tmp_path / "small_control.yaml"
    path.write_text(yaml.safe_dump(workflow, sort_keys=False))
    message = problems(f"controlnet={controlnet}", f"control_image={control_png}", "width=64", "height=64",
                       workflow=path)
    assert "node 'denoise', field 'control'" in message
    assert "the control image is 32x32, but the latents from 'noise.latents' make 64x64 images" in message
    run_workflow(str(path), ["model=tiny", "steps=1", f"controlnet={controlnet}", f"control_image={control_png}",
                             "width=32", "height=32"], output_dir=tmp_path / "fits")  # the same size: it runs


def test_control_images_of_two_controlnets_must_have_one_size(controlnet, control_png, tmp_path):
    workflow = yaml.safe_load((WORKFLOWS_DIR / "controlnet.yaml").read_text())
    nodes = workflow["nodes"]
    nodes["control_image_2"] = {**nodes["control_image"], "width": 32, "height": 32}
    nodes["control_2"] = {**nodes["control"], "image": "control_image_2.image", "control": "control.control"}
    nodes["denoise"]["control"] = "control_2.control"
    path = tmp_path / "two_sizes.yaml"
    path.write_text(yaml.safe_dump(workflow, sort_keys=False))
    message = problems(f"controlnet={controlnet}", f"control_image={control_png}", workflow=path)
    assert "the control images differ in size ('control' 64x64, 'control_2' 32x32)" in message


def test_start_must_be_below_end_and_scale_not_negative(controlnet, control_png):
    message = problems(f"controlnet={controlnet}", f"control_image={control_png}", "control_start=0.8",
                       "control_end=0.3")
    assert "from start 0.8 to end 0.3 of the schedule: start must be below end" in message
    message = problems(f"controlnet={controlnet}", f"control_image={control_png}", "control_scale=-1")
    assert "node 'control', field 'scale': expected a value >= 0.0, given -1" in message
    message = problems(f"controlnet={controlnet}", f"control_image={control_png}", "control_end=1.5")
    assert "field 'end': expected a value <= 1.0, given 1.5" in message


def test_control_images_one_for_all_or_one_per_image(controlnet, control_png):
    message = problems(f"controlnet={controlnet}", f"control_image=[{control_png},{control_png},{control_png}]",
                       "seed=[1,2]")
    assert "'control' gives 3 control images for 2 images" in message


def test_missing_control_image_and_bad_thresholds(controlnet, control_png):
    message = problems(f"controlnet={controlnet}")
    assert "no control image: give a file (path) or wire an image (image)" in message
    message = problems(f"controlnet={controlnet}", f"control_image={control_png}", "control_preprocess=canny",
                       "canny_low=250", "canny_high=100")
    assert "canny's low_threshold 250 is above its high_threshold 100" in message
    message = problems(f"controlnet={controlnet}", f"control_image={control_png}", "control_preprocess=depth")
    assert "field 'preprocess': preprocess=depth estimates depth with a DPT: wire depth_estimator" in message
    message = problems(f"controlnet={controlnet}", "control_image=/nonexistent/edges.png")
    assert "control image file '/nonexistent/edges.png' does not exist" in message


def test_controlnet_sources_that_cannot_be_used(controlnet, control_png, tmp_path):
    message = problems(f"control_image={control_png}")  # the config's default: none
    assert "node 'controlnet_model', field 'source': no ControlNet given" in message and "controlnet=..." in message
    pickle = tmp_path / "control.ckpt"
    pickle.write_bytes(b"not really")
    message = problems(f"controlnet={pickle}", f"control_image={control_png}")
    assert "is a pickle file, which sdflow refuses by default" in message
    single = tmp_path / "alone" / "control.safetensors"
    single.parent.mkdir()
    shutil.copy(controlnet / "diffusion_pytorch_model.safetensors", single)
    message = problems(f"controlnet={single}", f"control_image={control_png}")
    assert "node 'controlnet_model', field 'config'" in message and "needs its diffusers config" in message
    message = problems(f"controlnet={tmp_path / 'nowhere'}", f"control_image={control_png}")
    assert "does not exist" in message
    message = problems("controlnet=someone/sd-controlnet-lines", f"control_image={control_png}")  # HF_HUB_OFFLINE=1
    assert "hub ControlNet 'someone/sd-controlnet-lines' is not in the local Hugging Face cache" in message
    truncated = edited(controlnet, tmp_path)
    weights = truncated / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    message = problems(f"controlnet={truncated}", f"control_image={control_png}")
    assert "is truncated or corrupt" in message
