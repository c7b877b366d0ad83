"""The offline default model: its preset, and the warning for words it has never seen."""

from __future__ import annotations

from sdflow.api import compose_config, prompt_warnings


def test_shapes_prompts_in_the_vocabulary_get_no_warning():
    config = compose_config(["model=shapes", "prompt=a large yellow triangle on the right, purple background"])
    assert prompt_warnings(config) == []


def test_words_outside_the_vocabulary_are_named():
    config = compose_config(["model=shapes", "prompt=a lighthouse at dusk, red"])
    (warning,) = prompt_warnings(config)
    assert "cannot draw 'lighthouse', 'dusk'" in warning and "triangle" in warning


def test_open_vocabulary_models_never_warn():
    assert prompt_warnings(compose_config(["model=tiny", "prompt=a lighthouse at dusk"])) == []


def test_a_shapes_preset_pointed_at_another_model_does_not_warn():
    config = compose_config(["model=shapes", "model.path=/models/my-sd15", "prompt=a lighthouse at dusk"])
    assert prompt_warnings(config) == []
