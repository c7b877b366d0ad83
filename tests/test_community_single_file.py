"""Single-file checkpoints (one .safetensors in the original SD1/SD2/SDXL layout, as A1111 and Civitai share them):
the tiny models written in that layout load through diffusers' single-file loaders and equal their folders, and
StableDiffusionPipeline / StableDiffusionXLPipeline.from_single_file; the family is read from the file's tensors;
what is not a usable checkpoint is named before anything loads."""

from __future__ import annotations

import json

import diffusers
import pytest
import torch
from safetensors.torch import save_file

from original_layout import configs_only, write_original_checkpoint
from parity import as_nhwc, assert_parity, generators
from sdflow.api import run_workflow
from sdflow.engine import ValidationError
from sdflow.models.single_file import detect_family, tensor_shapes
from sdflow.models.builtin import builtin_model
from sdflow.nodes.records import ModelLoad

FAMILIES = {"tiny": "sd15", "tiny-sd2": "sd2", "tiny-sdxl": "sdxl", "tiny-sdxl-refiner": "sdxl_refiner"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{builtin name: (its original-layout .safetensors, a folder of its configs without weights)}."""
    root = tmp_path_factory.mktemp("single-files")
    made = {}
    for name, family in FAMILIES.items():
        folder = builtin_model(name)
        made[name] = (write_original_checkpoint(folder, root / f"{name}.safetensors", family),
                      configs_only(folder, root / f"{name}-configs"))
    return made


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_family_is_read_from_the_tensors(checkpoints, name):
    path, _ = checkpoints[name]
    assert detect_family(tensor_shapes(path), path) == FAMILIES[name]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_component_equals_the_folders(checkpoints, name):
    from sdflow.models.single_file import load_component, resolve_single_file

    path, configs = checkpoints[name]
    source = resolve_single_file(str(path), path, str(configs))
    folder = builtin_model(name)
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if not (folder / component).exists():
            continue
        ours = load_component(source, component, torch.float32).state_dict()
        cls = {"unet": diffusers.UNet2DConditionModel, "vae": diffusers.AutoencoderKL}.get(component)
        if cls is None:
            import transformers

            cls = transformers.CLIPTextModelWithProjection if component == "text_encoder_2" else transformers.CLIPTextModel
        theirs = cls.from_pretrained(folder, subfolder=component).state_dict()
        assert ours.keys() == theirs.keys(), component
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), component


def test_text2img_from_a_single_file_matches_from_single_file(checkpoints, tmp_path):
    path, configs = checkpoints["tiny"]
    ours = run_workflow("text2img", ["model=tiny", f"model.path={path}", f"model_config={configs}",
                                     "prompt=a red cat", "seed=3", "steps=4"], output_dir=tmp_path)
    pipe = diffusers.StableDiffusionPipeline.from_single_file(str(path), config=str(configs), safety_checker=None,
                                                             requires_safety_checker=False, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt="a red cat", num_inference_steps=4, height=64, width=64, generator=generators([3]),
                  output_type="np").images
    folder = run_workflow("text2img", ["model=tiny", "prompt=a red cat", "seed=3", "steps=4"], output_dir=tmp_path)
    moved = run_workflow("text2img", ["model=tiny", "model.path=builtin:tiny-sd2", "prompt=a red cat", "seed=3",
                                      "steps=4"], output_dir=tmp_path)
    image = as_nhwc(ours.outputs["decode"]["image"].pixels)
    assert_parity(image, theirs, as_nhwc(moved.outputs["decode"]["image"].pixels))
    assert (image == as_nhwc(folder.outputs["decode"]["image"].pixels)).all()  # the same weights: the same pixels
    assert ours.record.of(ModelLoad)["model"].model_hash == __import__("hashlib").sha256(path.read_bytes()).hexdigest()[:10]


def test_sdxl_from_a_single_file_matches_the_pipeline_of_its_folder(checkpoints, tmp_path):
    # Against from_pretrained of the folder, as diffusers' own single-file tests compare: the pipeline's
    # from_single_file picks the tiny SDXL's second text encoder by its width, which equals the first's (32) only in
    # the tiny model, and loads the first encoder's weights into it. sdflow reads each encoder from its own prefix.
    path, configs = checkpoints["tiny-sdxl"]
    ours = run_workflow("sdxl", ["model=tiny_sdxl", f"model.path={path}", f"model_config={configs}",
                                 "prompt=a red cat", "negative_prompt=blurry", "seed=2", "steps=4"], output_dir=tmp_path)
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(builtin_model("tiny-sdxl"), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt="a red cat", negative_prompt="blurry", num_inference_steps=4, guidance_scale=7.5, height=64,
                  width=64, generator=generators([2]), output_type="np").images
    moved = pipe(prompt="a red cat", num_inference_steps=4, guidance_scale=7.5, height=64, width=64,
                 generator=generators([2]), output_type="np").images
    assert_parity(as_nhwc(ours.outputs["decode"]["image"].pixels), theirs, moved)


def validation_messages(overrides) -> str:
    with pytest.raises(ValidationError) as info:
        run_workflow("text2img", ["model=tiny"] + overrides)
    return str(info.value)


def test_a_lora_file_is_not_a_checkpoint(tmp_path):
    lora = tmp_path / "style.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}, str(lora))
    message = validation_messages([f"model.path={lora}"])
    assert "field 'source'" in message and "is not a Stable Diffusion checkpoint" in message and "LoRA" in message


def test_a_renamed_pickle_is_named(tmp_path):
    renamed = tmp_path / "model.safetensors"
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}}, renamed)
    message = validation_messages([f"model.path={renamed}"])
    assert "is a pickle checkpoint" in message and "a .ckpt renamed" in message and "allow_pickle=true" in message


def test_ckpt_needs_allow_pickle(checkpoints, tmp_path):
    from safetensors.torch import load_file

    path, configs = checkpoints["tiny"]
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(path)}, ckpt)
    assert "allow_pickle=true" in validation_messages([f"model.path={ckpt}", f"model_config={configs}"])
    result = run_workflow("text2img", ["model=tiny", f"model.path={ckpt}", f"model_config={configs}", "allow_pickle=true",
                                       "seed=1", "steps=2"], output_dir=tmp_path)
    assert result.saved


def test_an_unknown_layout_and_a_wrong_config_are_named(checkpoints, tmp_path):
    odd = tmp_path / "odd.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3),
               "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(32, 4096)},
              str(odd))
    assert "has an unknown layout" in validation_messages([f"model.path={odd}"])
    path, _ = checkpoints["tiny"]
    _, sdxl_configs = checkpoints["tiny-sdxl"]
    message = validation_messages([f"model.path={path}", f"model_config={sdxl_configs}"])
    assert "attends to 32-wide text embeddings" in message and "64-wide" in message


def test_the_shipped_configs_have_the_published_architectures():
    """Each shipped config builds the published model (parameter counts as published), with the real CLIP tokenizer."""
    from transformers import CLIPTokenizer

    from sdflow.models.single_file import config_folder

    counts = {"sd15": 859_520_964, "sd2": 865_910_724, "sd2_base": 865_910_724, "sdxl": 2_567_463_684}
    for name, count in counts.items():
        folder = config_folder(name, name)
        with torch.device("meta"):
            unet = diffusers.UNet2DConditionModel.from_config(json.loads((folder / "unet" / "config.json").read_text()))
        assert sum(p.numel() for p in unet.parameters()) == count, name
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
