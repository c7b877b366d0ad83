"""A broken workflow is caught before anything loads, with messages naming file, node and field."""

from __future__ import annotations

import textwrap

import pytest

from sdflow.api import run_workflow
from sdflow.engine import ComponentCache, ValidationError, parse_workflow, resolve_interpolations, validate
import sdflow.nodes  # noqa: F401  (registers the node types)

GOOD = """
description: minimal text2img
nodes:
  model:
    type: load_model
    source: builtin:tiny
  prompt:
    type: encode_prompt
    text_encoder: model.text_encoder
    tokenizer: model.tokenizer
    prompt: a cat
  noise:
    type: init_latents
    vae: model.vae
    width: 64
    height: 64
    seed: 1
  denoise:
    type: denoise
    unet: model.unet
    scheduler: model.scheduler
    embeddings: prompt.embeddings
    latents: noise.latents
    steps: 3
  decode:
    type: decode
    vae: model.vae
    latents: denoise.latents
  write:
    type: save_image
    image: decode.image
"""


def problems_of(text: str, config=None, path="flow.yaml") -> list[str]:
    try:
        workflow = parse_workflow(textwrap.dedent(text), path)
    except ValidationError as exc:
        return [str(p) for p in exc.problems]
    found = resolve_interpolations(workflow, config or {})
    if found:
        return [str(p) for p in found]
    try:
        validate(workflow)
    except ValidationError as exc:
        return [str(p) for p in exc.problems]
    return []


def test_the_good_workflow_validates():
    assert problems_of(GOOD) == []


def test_typo_in_node_type_suggests_the_right_one():
    (message,) = problems_of(GOOD.replace("type: denoise", "type: denoize"))
    assert "flow.yaml:" in message and "node 'denoise'" in message and "field 'type'" in message
    assert "unknown node type 'denoize'" in message and "did you mean 'denoise'" in message


def test_latents_wired_into_an_image_input_is_a_type_mismatch():
    broken = GOOD + "  save:\n    type: save_image\n    image: denoise.latents\n"
    (message,) = problems_of(broken)
    assert "node 'save'" in message and "field 'image'" in message
    assert "expected IMAGE, given LATENTS from 'denoise.latents'" in message


CYCLE = """
  a:
    type: decode
    vae: model.vae
    latents: b.latents
  b:
    type: denoise
    unet: model.unet
    scheduler: model.scheduler
    embeddings: prompt.embeddings
    latents: c.latents
  c:
    type: encode_image
    vae: model.vae
    image: a.image
    seed: 1
"""


def test_cycle_is_reported_with_its_path():
    messages = problems_of(GOOD + CYCLE.lstrip("\n"))
    assert len(messages) == 1, messages
    assert "the workflow has a cycle:" in messages[0]
    # Edges point from a node to the nodes that read it: b feeds a, a feeds c, c feeds b.
    assert any(path in messages[0] for path in ("b -> a -> c -> b", "a -> c -> b -> a", "c -> b -> a -> c"))


def test_negative_step_count_is_out_of_range():
    (message,) = problems_of(GOOD.replace("steps: 3", "steps: -5"))
    assert "node 'denoise', field 'steps'" in message and "expected a value >= 1, given -5" in message


def test_yaml_traps_quoted_number_and_bare_no():
    messages = problems_of(GOOD.replace("steps: 3", 'steps: "20"').replace("prompt: a cat", "prompt: no"))
    joined = "\n".join(messages)
    assert len(messages) == 2
    assert "field 'steps': expected an integer, given the string '20' (remove the quotes)" in joined
    assert "field 'prompt': expected a string, given the boolean false" in joined and "quote the text" in joined


def test_every_problem_is_reported_at_once_with_line_numbers():
    broken = GOOD.replace("type: denoise", "type: denoize").replace("width: 64", "width: 65x").replace(
        "tokenizer: model.tokenizer", "tokenizer: modle.tokenizer")
    messages = problems_of(broken)
    assert len(messages) == 3, messages
    lines = {m.split(",")[0] for m in messages}
    assert all(l.startswith("flow.yaml:") for l in lines)
    assert any("refers to node 'modle', which does not exist; did you mean 'model'?" in m for m in messages)


def test_missing_and_unknown_fields_and_unknown_output():
    broken = GOOD.replace("    embeddings: prompt.embeddings\n", "    embedings: prompt.embeddings\n").replace(
        "latents: noise.latents", "latents: noise.latent")
    messages = "\n".join(problems_of(broken))
    assert "'denoise' has no field 'embedings'; did you mean 'embeddings'?" in messages
    assert "missing input 'embeddings' (EMBEDDINGS)" in messages
    assert "node 'noise' (init_latents) has no output 'latent'; did you mean 'latents'?" in messages


def test_width_not_multiple_of_vae_factor_is_caught_by_the_static_check():
    (message,) = problems_of(GOOD.replace("width: 64", "width: 63"))
    assert "node 'noise', field 'width'" in message and "multiple of 2" in message


def test_strength_below_one_on_pure_noise_is_caught():
    (message,) = problems_of(GOOD.replace("steps: 3", "steps: 3\n    strength: 0.5"))
    assert "field 'strength'" in message and "pure noise" in message


def test_interpolation_only_plain_keys_no_resolvers():
    (message,) = problems_of(GOOD.replace("prompt: a cat", "prompt: ${oc.env:HOME}"))
    assert "no resolvers" in message and "field 'prompt'" in message
    (missing,) = problems_of(GOOD.replace("prompt: a cat", "prompt: ${subject}"))
    assert "'${subject}' is not in the config" in missing
    assert problems_of(GOOD.replace("seed: 1", "seed: ${seed}"), {"seed": 4}) == []


def test_bad_yaml_and_duplicate_node_ids():
    (message,) = problems_of("nodes:\n  a: [unclosed\n")
    assert "not valid YAML" in message and "flow.yaml:" in message
    duplicated = GOOD + "  decode:\n    type: decode\n    vae: model.vae\n    latents: denoise.latents\n"
    with pytest.raises(ValidationError, match="'decode' appears twice"):
        parse_workflow(duplicated, "flow.yaml")


def test_missing_model_folder_is_a_validation_error(tmp_path):
    (message,) = problems_of(GOOD.replace("source: builtin:tiny", f"source: {tmp_path}/nowhere"))
    assert "node 'model', field 'source'" in message and "does not exist" in message


def test_hub_id_not_reachable_offline_is_a_validation_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (message,) = problems_of(GOOD.replace("source: builtin:tiny", "source: someone/not-downloaded-model"))
    assert "field 'source'" in message and "not in the local Hugging Face cache" in message


def test_run_workflow_with_a_broken_user_file_loads_nothing_and_writes_nothing(tmp_path):
    flow = tmp_path / "mine.yaml"
    flow.write_text(GOOD.replace("steps: 3", "steps: -1").replace("type: denoise", "type: denoise"))
    out = tmp_path / "out"
    cache = ComponentCache()
    with pytest.raises(ValidationError) as excinfo:
        run_workflow(str(flow), [], output_dir=out, cache=cache)
    assert str(flow) in str(excinfo.value)
    assert cache.stats.loads == 0 and not out.exists()


def test_a_missing_input_file_from_the_config_says_which_key_to_set():
    with pytest.raises(ValidationError) as excinfo:
        run_workflow("img2img", ["model=tiny"])
    message = str(excinfo.value)
    assert "node 'input', field 'path': expected a string, given nothing (null)" in message
    assert "set it on the command line, image=..." in message


def test_unknown_workflow_name_lists_the_known_ones():
    with pytest.raises(ValidationError, match="workflow 'text2imag' not found.*text2img"):
        run_workflow("text2imag", [])
