"""The offline default model: its preset, and the warning for words it has never seen."""

from __future__ import annotations

from sdflow.api import compose_config, plan_workflow
from sdflow.run.planning import prompt_warnings


def warnings_for(overrides):
    config = compose_config(overrides)
    return prompt_warnings(config, plan_workflow(config))


def test_shapes_prompts_in_the_vocabulary_get_no_warning():
    assert warnings_for(["model=shapes", "prompt=a large yellow triangle on the right, purple background"]) == []


def test_words_outside_the_vocabulary_are_named():
    (warning,) = warnings_for(["model=shapes", "prompt=a lighthouse at dusk, red", "negative_prompt=a boat"])
    assert "cannot draw 'lighthouse', 'dusk', 'boat'" in warning and "triangle" in warning


def test_the_warning_reads_the_prompts_the_workflow_encodes_not_the_configs(tmp_path):
    flow = tmp_path / "own.yaml"
    text = open(__file__.replace("tests/test_default_model.py", "sdflow/workflows/text2img.yaml")).read()
    flow.write_text(text.replace("prompt: ${prompt}", "prompt: a small red circle"))
    assert warnings_for(["model=shapes", f"workflow={flow}", "prompt=a lighthouse"]) == []


def test_open_vocabulary_models_never_warn():
    assert warnings_for(["model=tiny", "prompt=a lighthouse at dusk"]) == []


def test_a_shapes_preset_whose_plan_loads_another_model_does_not_warn():
    config = compose_config(["model=shapes", "prompt=a lighthouse at dusk"])
    other = plan_workflow(compose_config(["model=tiny", "prompt=a lighthouse at dusk"]))
    assert prompt_warnings(config, other) == []
