"""Textual-inversion embeddings (A1111 .safetensors and .pt, SDXL clip_l/clip_g, diffusers' format) through the
``textual_inversion`` node: parity with StableDiffusionPipeline / StableDiffusionXLPipeline after
``load_textual_inversion``; the cached tokenizer and text encoder never carry the new words into the next job."""

from __future__ import annotations

import diffusers
import pytest
import torch
from safetensors.torch import save_file

from parity import as_nhwc, assert_parity, generators, sd_pipeline
from sdflow.api import run_workflow
from sdflow.engine import ComponentCache, ValidationError
from sdflow.models.builtin import builtin_model

PROMPT = "a photo of myword on the left"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embeddings")
    torch.manual_seed(0)
    vectors = torch.randn(2, 32) * 2
    save_file({"emb_params": vectors}, str(folder / "myword.safetensors"))  # A1111: the file name is the word
    torch.save({"string_to_param": {"*": vectors}, "name": "myword", "step": 100}, folder / "myword.pt")
    save_file({"<myword>": vectors[0]}, str(folder / "learned_embeds.safetensors"))  # diffusers' format
    save_file({"clip_l": torch.randn(2, 32) * 2, "clip_g": torch.randn(2, 32) * 2}, str(folder / "xlword.safetensors"))
    save_file({"emb_params": torch.randn(1, 768)}, str(folder / "wide.safetensors"))
    return folder


def sdflow_image(workflow, model, files_spec, prompt, tmp_path, cache=None, extra=()):
    result = run_workflow(workflow, [f"model={model}", f"textual_inversions={files_spec}", f"prompt={prompt}", "seed=3",
                                     "steps=4", *extra], output_dir=tmp_path, cache=cache)
    return as_nhwc(result.outputs["decode"]["image"].pixels), result


@pytest.fixture(scope="module")
def pipe(tiny_sd):
    return sd_pipeline(tiny_sd)


def diffusers_image(pipe, prompt, **kwargs):
    return pipe(prompt=prompt, num_inference_steps=4, guidance_scale=7.5, height=64, width=64,
                generator=generators([3]), output_type="np", **kwargs).images


@pytest.mark.parametrize("name", ["myword.safetensors", "myword.pt"])
def test_a1111_embedding_matches_load_textual_inversion(pipe, files, tmp_path, name):
    extra = ["allow_pickle=true"] if name.endswith(".pt") else []
    ours, result = sdflow_image("text2img", "tiny", f"['{files / name}']", PROMPT, tmp_path, extra=extra)
    without = diffusers_image(pipe, PROMPT)
    pipe.load_textual_inversion(str(files / "myword.safetensors"), token="myword")
    try:
        theirs = diffusers_image(pipe, PROMPT)
    finally:
        pipe.unload_textual_inversion()
    assert_parity(ours, theirs, without)
    from PIL import Image

    assert 'TI hashes: "myword: ' in Image.open(result.saved[0]).text["parameters"]


def test_diffusers_embedding_with_its_token(pipe, files, tmp_path):
    prompt = "a photo of <myword>"
    ours, _ = sdflow_image("text2img", "tiny", f"[{{path:'{files / 'learned_embeds.safetensors'}',token:'<myword>'}}]",
                           f"'{prompt}'", tmp_path)
    without = diffusers_image(pipe, prompt)
    pipe.load_textual_inversion(str(files / "learned_embeds.safetensors"), token="<myword>")
    try:
        theirs = diffusers_image(pipe, prompt)
    finally:
        pipe.unload_textual_inversion()
    assert_parity(ours, theirs, without)


def test_sdxl_embedding_matches_load_textual_inversion(files, tmp_path):
    from safetensors.torch import load_file

    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(builtin_model("tiny-sdxl"), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    prompt = "a photo of xlword"
    ours, _ = sdflow_image("sdxl", "tiny_sdxl", f"['{files / 'xlword.safetensors'}']", prompt, tmp_path)
    without = diffusers_image(pipe, prompt)
    state = load_file(files / "xlword.safetensors")  # diffusers' documented recipe for SDXL embeddings
    pipe.load_textual_inversion(state["clip_l"], token="xlword", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token="xlword", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    assert_parity(ours, diffusers_image(pipe, prompt), without)


def test_the_cached_tokenizer_gets_no_new_words(files, tmp_path):
    cache = ComponentCache()
    plain, _ = sdflow_image("text2img", "tiny", "[]", PROMPT, tmp_path, cache)
    sdflow_image("text2img", "tiny", f"['{files / 'myword.safetensors'}']", PROMPT, tmp_path, cache)
    again, result = sdflow_image("text2img", "tiny", "[]", PROMPT, tmp_path, cache)
    assert (again == plain).all()
    assert "myword" not in result.outputs["model"]["tokenizer"].get_vocab()


def test_embeddings_of_another_family_are_named(files):
    with pytest.raises(ValidationError, match=r"768-wide vectors .*reads 32-wide ones"):
        run_workflow("text2img", ["model=tiny", f"textual_inversions=['{files / 'wide.safetensors'}']", "prompt=a"])
    with pytest.raises(ValidationError, match=r"is for SDXL \(clip_l and clip_g\), but this node has one text encoder"):
        run_workflow("text2img", ["model=tiny", f"textual_inversions=['{files / 'xlword.safetensors'}']", "prompt=a"])
    with pytest.raises(ValidationError, match="pickle file"):
        run_workflow("text2img", ["model=tiny", f"textual_inversions=['{files / 'myword.pt'}']", "prompt=a"])
