"""Prompt weighting and long prompts as AUTOMATIC1111 reads them: parity with StableDiffusionPipeline and
StableDiffusionXLPipeline given the chunked, weighted embeddings of a plain reference implementation
(``prompt_embeds`` / ``negative_prompt_embeds``); plain short prompts keep diffusers' own embeddings bit for bit.
fp32, CPU, the tiny models, max abs diff <= 1e-4."""

from __future__ import annotations

import shutil

import diffusers
import pytest
import torch

from parity import as_nhwc, assert_parity, generators, sd_pipeline
from sdflow.api import run_workflow
from sdflow.prompt_syntax import parse_weights

WORDS = ("a photo of a red cat on the left with a blue castle in the background at dusk and a green dog "
         "on the right with a yellow triangle small large ").split()
LONG = " ".join(WORDS[i % len(WORDS)] for i in range(130))  # 130 tokens of the tiny vocabulary: two chunks
SHORT = "a lighthouse at dusk"


def reference_embeds(encode, tokenizer, fragments, chunks=None):
    """A straightforward A1111-style encoding: tokens of each (text, weight) fragment, cut every 75, each chunk
    BOS + tokens + EOS + padding, weights applied and the chunk's mean restored; padded with empty chunks."""
    ids, weights = [], []
    for text, weight in fragments:
        tokens = tokenizer(text, add_special_tokens=False).input_ids
        ids += tokens
        weights += [weight] * len(tokens)
    starts = list(range(0, max(len(ids), 1), 75)) + [None] * ((chunks or 0) - len(range(0, max(len(ids), 1), 75)))
    out = []
    for start in starts:
        part, part_weights = (ids[start:start + 75], weights[start:start + 75]) if start is not None else ([], [])
        pad = 75 - len(part)
        chunk = [tokenizer.bos_token_id] + part + [tokenizer.eos_token_id] + [tokenizer.pad_token_id] * pad
        with torch.no_grad():
            z = encode(torch.tensor([chunk]))
        w = torch.tensor([1.0] + part_weights + [1.0] * (pad + 1)).reshape(1, -1, 1)
        out.append(z * w * (z.mean() / (z * w).mean()))
    return torch.cat(out, dim=1)


def test_weight_syntax_reads_as_a1111_documents_it():
    assert parse_weights("normal text") == [("normal text", 1.0)]
    assert parse_weights("an (important) word") == [("an ", 1.0), ("important", 1.1), (" word", 1.0)]
    assert parse_weights("(unbalanced") == [("unbalanced", 1.1)]
    assert parse_weights("\\(literal\\]") == [("(literal]", 1.0)]
    assert parse_weights("(unnecessary)(parens)") == [("unnecessaryparens", 1.1)]
    parsed = parse_weights("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    assert [text for text, _ in parsed] == ["a ", "house", " ", "on", " a ", "hill", ", sun, ", "sky", "."]
    assert [weight for _, weight in parsed] == pytest.approx([1.0, 1.573, 1.1, 1.0, 1.1, 0.55, 1.1, 1.4641, 1.1])
    assert parse_weights("a BREAK b") == [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]


@pytest.fixture(scope="module")
def tiny_sd_biased(tiny_sd, tmp_path_factory):
    """The tiny model with a trained-looking final LayerNorm in its text encoder.

    A1111's weighting restores each chunk's mean; the tiny encoder's untouched LayerNorm (weight 1, bias 0)
    makes that mean ~1e-9, so the restoring factor would be a ratio of rounding noise. Real CLIP encoders
    have a bias, and a mean far from 0.
    """
    from transformers import CLIPTextModel

    folder = tmp_path_factory.mktemp("tiny-biased") / "model"
    shutil.copytree(tiny_sd, folder)
    encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    torch.manual_seed(0)
    with torch.no_grad():
        encoder.get_submodule("final_layer_norm").bias.normal_(0.5, 0.5)
    encoder.save_pretrained(folder / "text_encoder")
    return folder


@pytest.fixture(scope="module")
def sd_pipe(tiny_sd_biased):
    return sd_pipeline(tiny_sd_biased)


def sd_encode(pipe):
    return lambda ids: pipe.text_encoder(ids)[0]


def sd_model(pipe) -> str:
    return f"model.path={pipe.name_or_path}"


def sdflow_image(workflow, overrides, tmp_path):
    result = run_workflow(workflow, overrides, output_dir=tmp_path)
    return as_nhwc(result.outputs["decode"]["image"].pixels), result


def test_plain_short_prompts_keep_the_pipelines_embeddings_bit_for_bit(sd_pipe):
    from sdflow.nodes.encode_prompt import embed_text
    from sdflow.prompt_syntax import embed_prompt

    for text in (SHORT, "", "a cat: blue, background! at 3", " ".join(["cat"] * 75)):
        assert torch.equal(embed_prompt(sd_pipe.text_encoder, sd_pipe.tokenizer, text, "cpu"),
                           embed_text(sd_pipe.text_encoder, sd_pipe.tokenizer, text, "cpu"))


def test_long_prompt_is_chunked_like_a1111_not_truncated(sd_pipe, tmp_path):
    ours, result = sdflow_image("text2img", ["model=tiny", sd_model(sd_pipe), f"prompt={LONG}",
                                             "negative_prompt=blurry low quality", "seed=3", "steps=4"], tmp_path)
    encode = sd_encode(sd_pipe)
    positive = reference_embeds(encode, sd_pipe.tokenizer, [(LONG, 1.0)])
    assert positive.shape[1] == 154  # two chunks of 77
    negative = reference_embeds(encode, sd_pipe.tokenizer, [("blurry low quality", 1.0)], chunks=2)
    theirs = sd_pipe(prompt_embeds=positive, negative_prompt_embeds=negative, num_inference_steps=4, height=64,
                     width=64, generator=generators([3]), output_type="np").images
    # diffusers given the text itself truncates it to 77 tokens: what sdflow did before
    truncated = sd_pipe(prompt=LONG, negative_prompt="blurry low quality", num_inference_steps=4, height=64, width=64,
                        generator=generators([3]), output_type="np").images
    assert_parity(ours, theirs, truncated)
    assert not result.record.warnings  # a prompt and its negative padded to each other is not a warning


def test_weights_match_the_reference_and_move_the_image(sd_pipe, tmp_path):
    text = "a photo of a (red cat:2.5) on the [[left]] with a ((blue castle))"
    ours, _ = sdflow_image("text2img", ["model=tiny", sd_model(sd_pipe), f"prompt='{text}'", "seed=5", "steps=4"],
                           tmp_path)
    fragments = [("a photo of a ", 1.0), ("red cat", 2.5), (" on the ", 1.0), ("left", 1 / 1.1 / 1.1), (" with a ", 1.0),
                 ("blue castle", 1.1 * 1.1)]
    encode = sd_encode(sd_pipe)
    positive = reference_embeds(encode, sd_pipe.tokenizer, fragments)
    negative = reference_embeds(encode, sd_pipe.tokenizer, [("", 1.0)])
    theirs = sd_pipe(prompt_embeds=positive, negative_prompt_embeds=negative, num_inference_steps=4, height=64,
                     width=64, generator=generators([5]), output_type="np").images
    unweighted = sd_pipe(prompt="a photo of a red cat on the left with a blue castle", num_inference_steps=4,
                         height=64, width=64, generator=generators([5]), output_type="np").images
    assert_parity(ours, theirs, unweighted)


def test_break_starts_a_new_chunk(sd_pipe):
    from sdflow.prompt_syntax import embed_prompt

    broken = embed_prompt(sd_pipe.text_encoder, sd_pipe.tokenizer, "a red cat BREAK a blue dog", "cpu")
    encode = sd_encode(sd_pipe)
    expected = torch.cat([reference_embeds(encode, sd_pipe.tokenizer, [("a red cat", 1.0)]),
                          reference_embeds(encode, sd_pipe.tokenizer, [("a blue dog", 1.0)])], dim=1)
    assert torch.allclose(broken, expected, atol=1e-6)


def test_prompts_of_different_lengths_in_one_batch_are_padded_with_a_warning(tmp_path):
    result = run_workflow("text2img", ["model=tiny", f"prompt=['{SHORT}','{LONG}']", "seed=[1,2]", "steps=2"],
                          output_dir=tmp_path)
    assert result.outputs["prompt"]["embeddings"].positive.shape[1] == 154
    (warning,) = result.record.warnings
    assert "node 'prompt'" in warning and "image(s) 0 were padded to 2 chunks" in warning


@pytest.fixture(scope="module")
def sdxl_pipe():
    from sdflow.models.builtin import builtin_model

    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(builtin_model("tiny-sdxl"), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl_reference(pipe, fragments, chunks=None):
    """Both encoders' penultimate states per chunk (each weighted on its own), and the first chunk's pooled."""
    states, pooled = [], []

    def second(ids):
        out = pipe.text_encoder_2(ids, output_hidden_states=True)
        pooled.append(out[0])
        return out.hidden_states[-2]

    first = reference_embeds(lambda ids: pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2],
                             pipe.tokenizer, fragments, chunks)
    states = reference_embeds(second, pipe.tokenizer_2, fragments, chunks)
    return torch.cat([first, states], dim=-1), pooled[0]


def test_sdxl_long_weighted_prompt_matches_sdxl_pipeline(sdxl_pipe, tmp_path):
    text = LONG + " (castle:1.5)"
    ours, _ = sdflow_image("sdxl", ["model=tiny_sdxl", f"prompt='{text}'", "negative_prompt=blurry", "seed=2",
                                    "steps=4"], tmp_path)
    positive, pooled = sdxl_reference(sdxl_pipe, [(LONG + " ", 1.0), ("castle", 1.5)])
    assert positive.shape[1] == 154
    negative, negative_pooled = sdxl_reference(sdxl_pipe, [("blurry", 1.0)], chunks=2)
    theirs = sdxl_pipe(prompt_embeds=positive, negative_prompt_embeds=negative, pooled_prompt_embeds=pooled,
                       negative_pooled_prompt_embeds=negative_pooled, num_inference_steps=4, guidance_scale=7.5,
                       height=64, width=64, generator=generators([2]), output_type="np").images
    truncated = sdxl_pipe(prompt=text, negative_prompt="blurry", num_inference_steps=4, guidance_scale=7.5, height=64,
                          width=64, generator=generators([2]), output_type="np").images
    assert_parity(ours, theirs, truncated)


def test_sdxl_weights_move_the_image(tmp_path):
    plain, _ = sdflow_image("sdxl", ["model=tiny_sdxl", "prompt=a red cat on the left", "seed=2", "steps=3"], tmp_path)
    weighted, _ = sdflow_image("sdxl", ["model=tiny_sdxl", "prompt='(a red cat on the left:2.5)'", "seed=2", "steps=3"],
                               tmp_path)
    assert abs(plain - weighted).max() > 100 * 1e-4
