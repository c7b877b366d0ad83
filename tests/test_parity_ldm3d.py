"""Parity with diffusers' StableDiffusionLDM3DPipeline (text to RGB + depth): the ldm3d workflow's rgb and
depth against the pipeline's output_type="np" rgb and depth. fp32, CPU, the same tiny components,
max abs diff <= 1e-4."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
from PIL import Image

from parity import as_nhwc, assert_parity, generators
from sdflow.api import run_workflow
from sdflow.engine import ValidationError

PROMPT = "a lighthouse at dusk"


@pytest.fixture(scope="module")
def tiny_ldm3d():
    from sdflow.models.builtin import builtin_model

    return builtin_model("tiny-ldm3d")


@pytest.fixture(scope="module")
def ldm3d_pipe(tiny_ldm3d):
    pipe = diffusers.StableDiffusionLDM3DPipeline.from_pretrained(tiny_ldm3d, safety_checker=None,
                                                                  requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_rgbd(pipe, seeds, guidance=7.5, steps=4):
    # guidance_scale passed explicitly: the LDM3D pipeline's default is 5.0, sdflow's config says 7.5.
    out = pipe([PROMPT] * len(seeds), num_inference_steps=steps, guidance_scale=guidance, height=64, width=64,
               generator=generators(seeds), output_type="np")
    return out.rgb, out.depth


def sdflow_rgbd(overrides, tmp_path):
    result = run_workflow("ldm3d", ["model=tiny_ldm3d", f"prompt={PROMPT}", "steps=4"] + overrides, output_dir=tmp_path)
    decoded = result.outputs["decode"]
    return result, as_nhwc(decoded["image"].pixels), as_nhwc(decoded["depth"].pixels)


def test_ldm3d_rgb_and_depth_match_ldm3d_pipeline(ldm3d_pipe, tmp_path):
    _, rgb, depth = sdflow_rgbd(["seed=3"], tmp_path)
    theirs_rgb, theirs_depth = diffusers_rgbd(ldm3d_pipe, [3])
    assert rgb.shape == (1, 64, 64, 3) and depth.shape == (1, 64, 64, 1)
    moved_rgb, moved_depth = diffusers_rgbd(ldm3d_pipe, [4])
    assert_parity(rgb, theirs_rgb, moved_rgb)
    assert_parity(depth, theirs_depth, moved_depth)


def test_ldm3d_guidance_and_batch_of_two_seeds_match(ldm3d_pipe, tmp_path):
    _, rgb, depth = sdflow_rgbd(["seed=[5,9]", "guidance=5.0"], tmp_path)
    theirs_rgb, theirs_depth = diffusers_rgbd(ldm3d_pipe, [5, 9], guidance=5.0)
    moved_rgb, moved_depth = diffusers_rgbd(ldm3d_pipe, [5, 9], guidance=9.0)
    assert_parity(rgb, theirs_rgb, moved_rgb)
    assert_parity(depth, theirs_depth, moved_depth)


def test_ldm3d_saves_rgb_and_16_bit_depth_png(ldm3d_pipe, tmp_path):
    result, _, _ = sdflow_rgbd(["seed=3"], tmp_path)
    names = sorted(p.name for p in result.saved)
    assert names == ["ldm3d_depth_000_seed3.png", "ldm3d_rgb_000_seed3.png"]
    _, theirs_depth = diffusers_rgbd(ldm3d_pipe, [3])
    with Image.open(tmp_path / "ldm3d_depth_000_seed3.png") as depth_png:
        assert depth_png.mode == "I;16"
        saved = np.array(depth_png).astype(np.int64)
    # diffusers' LDM3D writes depth as uint16(depth * 65535); the 1e-4 float tolerance is ~7 of those steps.
    expected = (theirs_depth[0, :, :, 0] * 65535.0).astype(np.uint16).astype(np.int64)
    assert np.abs(saved - expected).max() <= 7
    assert saved.std() > 1000  # a real depth map, not a constant
    with Image.open(tmp_path / "ldm3d_rgb_000_seed3.png") as rgb_png:
        assert rgb_png.mode == "RGB" and rgb_png.size == (64, 64)


def test_ldm3d_on_an_rgb_model_fails_validation_naming_the_model_it_needs(tiny_sd, tmp_path, fresh_cache):
    with pytest.raises(ValidationError) as info:
        run_workflow("ldm3d", ["model=tiny", "seed=0"], output_dir=tmp_path, cache=fresh_cache)
    [problem] = info.value.problems
    assert (problem.node, problem.field) == ("decode", "vae")
    assert "4 output channels" in problem.message and "decodes 3" in problem.message
    assert "Intel/ldm3d-4c" in problem.message and "model=ldm3d" in problem.message and "builtin:tiny" in problem.message
    assert len(fresh_cache) == 0  # nothing loaded
