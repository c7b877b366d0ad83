"""The web UI's forms: generated from the workflow files, the node declarations and conf/ (sdflow/ui/form.py)."""

from __future__ import annotations

import pytest

from sdflow.api import compose_config
from sdflow.engine import REGISTRY, Problem
from sdflow.help import group_choices
from sdflow.ui.form import field_of, load_form, parse_seeds, sweep_values
from sdflow.ui.limits import GUARDED_ROLES
from sdflow.workflows import workflow_path


@pytest.fixture(scope="module")
def config():
    return compose_config([])


def fields_of(name, config, **chosen):
    return {f.key: f for f in load_form(workflow_path(name), config, chosen or None)}


def test_text2img_form_is_typed_from_the_node_declarations(config):
    form = fields_of("text2img", config)
    assert list(form)[:3] == ["model", "scheduler", "prompt"]  # config groups first, then conf/config.yaml's order
    steps, guidance, seed, width = form["steps"], form["guidance"], form["seed"], form["width"]
    declared = REGISTRY["denoise"].params
    assert (steps.kind, steps.minimum, steps.maximum, steps.default) == ("int", declared["steps"].min,
                                                                          declared["steps"].max, 20)
    assert steps.feeds == ("denoise.steps",)
    assert (guidance.kind, guidance.per_image, guidance.default) == ("float", True, 2.0)  # shapes preset's guidance
    assert (seed.kind, seed.per_image) == ("seeds", True)
    assert (form["prompt"].kind, form["prompt"].per_image) == ("text", True)
    assert width.kind == "int" and width.default == 64 and width.minimum == REGISTRY["init_latents"].params["width"].min
    assert form["prompt"].doc.startswith("the default model draws shapes")  # the config's own comment
    negative = REGISTRY["encode_prompt"].params["negative_prompt"]
    assert form["negative_prompt"].doc == negative.doc  # the config has no comment for it: the node's doc
    assert form["model"].kind == "group" and form["model"].default == "shapes"
    assert list(form["model"].choices) == group_choices("model")
    assert "euler" in form["scheduler"].choices and form["scheduler"].default == "model"
    # server-only values get no field: a model path, pickles, the workflow itself, files other than images
    assert not {"allow_pickle", "refiner", "workflow", "vae", "loras", "textual_inversions"} & set(form)
    assert "image" not in form and "strength" not in form


def test_file_inputs_become_uploads_and_choices_stay_choices(config):
    inpaint = fields_of("inpaint", config)
    assert (inpaint["image"].kind, inpaint["mask"].kind) == ("file", "file")
    assert inpaint["inpaint_mode"].kind == "choice"
    assert inpaint["inpaint_mode"].choices == REGISTRY["inpaint_condition"].params["mode"].choices
    depth = fields_of("depth2img", config)
    assert depth["depth_map"].kind == "file" and depth["depth_map"].nullable
    assert fields_of("img2img", config)["strength"].maximum == 1.0


def test_defaults_follow_the_chosen_model_preset(config):
    tiny = fields_of("text2img", compose_config(["model=tiny"]), model="tiny")
    assert tiny["model"].default == "tiny"
    assert tiny["guidance"].default == compose_config(["model=tiny"]).guidance


def test_a_users_workflow_from_the_workflow_path(tmp_path, monkeypatch, config):
    (tmp_path / "mine.yaml").write_text("""\
description: two stages that share one seed
nodes:
  model: {type: load_model, source: "${model.path}"}
  prompt: {type: encode_prompt, text_encoder: model.text_encoder, tokenizer: model.tokenizer, prompt: "${prompt}"}
  noise: {type: init_latents, vae: model.vae, width: 64, height: 64, seed: "${seed}"}
  denoise: {type: denoise, unet: model.unet, scheduler: model.scheduler, embeddings: prompt.embeddings,
            latents: noise.latents, steps: "${steps}", guidance: "${steps}"}
  decode: {type: decode, vae: model.vae, latents: denoise.latents}
  save: {type: save_image, image: decode.image, prefix: "mine_${seed}"}
""")
    monkeypatch.setenv("SDFLOW_WORKFLOW_PATH", str(tmp_path))
    form = fields_of("mine", config)
    # one key feeding two parameters: every field it feeds, and the narrower range of both
    assert form["steps"].feeds == ("denoise.steps", "denoise.guidance")
    declared = REGISTRY["denoise"].params
    assert form["steps"].maximum == min(declared["steps"].max, declared["guidance"].max)
    assert form["seed"].feeds == ("noise.seed", "save.prefix")  # also part of a longer text
    assert set(form) == {"model", "prompt", "seed", "steps"}


def test_every_parameter_that_names_a_file_or_a_model_is_guarded():
    """A new node parameter that reads a file must declare its role (input_file, model_source...), or the server
    would pass it on."""
    for spec in REGISTRY.values():
        for name, param in spec.params.items():
            reads = any(word in param.doc.lower() for word in ("file", "folder", "hub id"))
            if reads and name != "prefix":  # save_image's prefix is a name part, refused with a '/' by the node
                assert param.role in GUARDED_ROLES, f"{spec.name}.{name}: {param.doc}"
    guarded = {(spec.name, name) for spec in REGISTRY.values() for name, p in spec.params.items()
               if p.role in GUARDED_ROLES}
    assert {("load_image", "path"), ("load_model", "source"), ("load_model", "config"), ("load_model", "allow_pickle"),
            ("lora", "loras")} <= guarded


def test_seeds_and_sweeps_become_per_image_lists():
    assert parse_seeds("7") == 7
    assert parse_seeds("1, 2, 3") == parse_seeds("[1,2,3]") == [1, 2, 3]
    assert parse_seeds("3,") == [3]
    assert parse_seeds("x") == "x"  # left for validation to name
    values = {"prompt": "a red circle", "seed": 0}
    assert sweep_values(values, "", "") == values
    assert sweep_values(values, "1, 2", "") == {"prompt": ["a red circle"] * 2, "seed": [1, 2]}
    both = sweep_values(values, "1,2", "a red circle\n\na blue square\n")
    assert both["seed"] == [1, 2, 1, 2]
    assert both["prompt"] == ["a red circle", "a red circle", "a blue square", "a blue square"]


def test_problems_are_shown_beside_the_field_that_feeds_them(config):
    fields = load_form(workflow_path("text2img"), config)
    assert field_of(Problem("text2img.yaml", "denoise", "steps", "too many", 31), fields) == "steps"
    assert field_of(Problem("values", None, "image", "not an upload"), fields) is None  # text2img has no image
    assert field_of(Problem("values", None, "seed", "bad"), fields) == "seed"
    assert field_of(Problem("text2img.yaml", "save", "prefix", "bad"), fields) is None  # not in the form: listed apart
