"""Parity with diffusers' StableDiffusionPipelineSafe (safe latent diffusion): the safe workflow, where the
shared denoise node batches [uncond, text, concept] and a safe_guidance rule combines them. fp32, CPU, the
tiny SD1 model, max abs diff <= 1e-4. SLD's default 10 warm-up steps would hide it in a short run: 1-2 here."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
from diffusers.pipelines.deprecated.stable_diffusion_safe import StableDiffusionPipelineSafe

from parity import as_nhwc, assert_parity, generators
from sdflow.api import run_workflow
from sdflow.workflows import WORKFLOWS_DIR
from sdflow.engine import ValidationError

PROMPT = "a red castle at dusk"
CONCEPT = "a black cat"


@pytest.fixture(scope="module")
def safe_pipe(tiny_sd):
    pipe = StableDiffusionPipelineSafe.from_pretrained(tiny_sd, safety_checker=None, feature_extractor=None,
                                                       requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdflow_safe(tmp_path, overrides):
    result = run_workflow("safe", ["model=tiny", f"prompt={PROMPT}", "steps=5"] + overrides, output_dir=tmp_path)
    return as_nhwc(result.outputs["decode"]["image"].pixels)


def diffusers_safe(pipe, seed=3, concept=CONCEPT, **sld):
    pipe.safety_concept = concept
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Safety checker disabled!" when SLD is off
        return pipe(prompt=PROMPT, num_inference_steps=5, guidance_scale=7.5, height=64, width=64,
                    generator=generators([seed]), output_type="np", **sld).images


SLD_ON = dict(sld_guidance_scale=1000.0, sld_warmup_steps=1, sld_threshold=0.01, sld_momentum_scale=0.5, sld_mom_beta=0.7)


def overrides_for(concept=CONCEPT, **sld):
    return [f"safety_concept={concept}", "seed=3"] + [f"{k}={v}" for k, v in sld.items()]


def test_sld_with_momentum_matches_safe_pipeline(safe_pipe, tmp_path):
    ours = sdflow_safe(tmp_path, overrides_for(**SLD_ON))
    theirs = diffusers_safe(safe_pipe, **SLD_ON)
    moved = diffusers_safe(safe_pipe, **{**SLD_ON, "sld_guidance_scale": 0.0})  # SLD off
    assert_parity(ours, theirs, moved)


def test_sld_momentum_is_applied_as_the_pipeline_does(safe_pipe, tmp_path):
    settings = {**SLD_ON, "sld_warmup_steps": 2}
    ours = sdflow_safe(tmp_path, overrides_for(**settings))
    theirs = diffusers_safe(safe_pipe, **settings)
    moved = diffusers_safe(safe_pipe, **{**settings, "sld_momentum_scale": 0.0})
    assert_parity(ours, theirs, moved)


def test_sld_off_equals_safe_pipeline_without_sld(safe_pipe, tmp_path):
    off = {**SLD_ON, "sld_guidance_scale": 1.0}
    ours = sdflow_safe(tmp_path, overrides_for(**off))
    theirs = diffusers_safe(safe_pipe, **off)
    assert_parity(ours, theirs, diffusers_safe(safe_pipe, **SLD_ON))


def test_sld_scale_and_threshold_match_the_pipeline(safe_pipe, tmp_path):
    settings = {**SLD_ON, "sld_guidance_scale": 20.0, "sld_threshold": 0.02}
    ours = sdflow_safe(tmp_path, overrides_for(**settings))
    theirs = diffusers_safe(safe_pipe, **settings)
    assert_parity(ours, theirs, diffusers_safe(safe_pipe, **SLD_ON))


def test_safety_concept_matches_the_pipeline(safe_pipe, tmp_path):
    ours = sdflow_safe(tmp_path, overrides_for(concept="blue square", **SLD_ON))
    theirs = diffusers_safe(safe_pipe, concept="blue square", **SLD_ON)
    assert_parity(ours, theirs, diffusers_safe(safe_pipe, concept=CONCEPT, **SLD_ON))


def test_concept_from_another_model_family_is_refused_before_loading(tiny_sd, tmp_path):
    # Only config files are read at validation, so a copy whose text encoder claims another width will do.
    wide = tmp_path / "wide-text-model"
    shutil.copytree(tiny_sd, wide)
    config_path = wide / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "hidden_size": 64}))
    workflow = tmp_path / "mixed.yaml"
    text = (WORKFLOWS_DIR / "safe.yaml").read_text()
    text = text.replace("  safe_guidance:\n    type: safe_guidance\n    text_encoder: model.text_encoder\n    "
                        "tokenizer: model.tokenizer\n",
                        f"  other:\n    type: load_model\n    source: {wide}\n  safe_guidance:\n    type: safe_guidance\n"
                        "    text_encoder: other.text_encoder\n    tokenizer: other.tokenizer\n")
    assert "other.text_encoder" in text, "safe.yaml changed: update this test's rewiring"
    workflow.write_text(text)
    with pytest.raises(ValidationError) as caught:
        run_workflow(str(workflow), ["model=tiny"], output_dir=tmp_path)
    message = str(caught.value)
    assert "node 'denoise', field 'guidance_rule'" in message and "32-wide" in message and "64-wide" in message
