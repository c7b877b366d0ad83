"""runtime.compile with the real torch.compile (inductor, on this CPU), not a stand-in: the compiled UNet and VAE
decoder give the eager pixels, are compiled once per process and shape (a second job of the same shape compiles
nothing), and the paths that take the compiled modules apart still work through them: a LoRA fused into a copy of
the compiled UNet, and the tiled decode calling the compiled decoder tile by tile."""

from __future__ import annotations

import pytest
import torch

from parity import as_nhwc, max_diff
from sdflow.api import run_workflow
from sdflow.engine import ComponentCache
from test_community_lora import lora_files  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow  # inductor compiles C++ on the first call of each shape: tens of seconds

# Inductor fuses and reorders float operations: the same maths, not the same rounding
COMPILED_TOLERANCE = 1e-4
BASE = ["model=tiny", "prompt=a red circle", "steps=3", "runtime.output_cache=false"]


def image(result):
    return as_nhwc(result.outputs["decode"]["image"].pixels)


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["stats"].values()) if "stats" in counters else 0


@pytest.fixture(scope="module")
def compiled_cache():
    """One component cache for the module's compiled runs, as one process keeps it."""
    torch._dynamo.reset()
    return ComponentCache()


def test_compiled_unet_and_decoder_give_the_eager_pixels_and_compile_once(compiled_cache, tmp_path):
    eager = run_workflow("text2img", BASE + ["seed=1"], output_dir=tmp_path / "eager")
    first = run_workflow("text2img", BASE + ["seed=1", "runtime.compile=true"], output_dir=tmp_path / "c1",
                         cache=compiled_cache)
    assert max_diff(image(first), image(eager)) <= COMPILED_TOLERANCE
    unet = next(compiled_cache.get(key, load=None) for key in compiled_cache.keys() if key[1] == "unet")
    vae = next(compiled_cache.get(key, load=None) for key in compiled_cache.keys() if key[1] == "vae")
    assert isinstance(unet, torch._dynamo.eval_frame.OptimizedModule)
    assert isinstance(vae.decoder, torch._dynamo.eval_frame.OptimizedModule)
    graphs = compiled_graphs()
    second = run_workflow("text2img", BASE + ["seed=2", "runtime.compile=true"], output_dir=tmp_path / "c2",
                          cache=compiled_cache)
    assert compiled_graphs() == graphs  # the same shapes: nothing compiled again
    other = run_workflow("text2img", BASE + ["seed=2"], output_dir=tmp_path / "eager2")
    assert max_diff(image(second), image(other)) <= COMPILED_TOLERANCE
    assert max_diff(image(second), image(first)) > 100 * COMPILED_TOLERANCE  # (another seed: the check can fail)


def test_a_lora_fused_into_the_compiled_unet_gives_the_eager_lora_pixels(compiled_cache, lora_files, tmp_path):  # noqa: F811
    loras = f"loras=[{{path:'{lora_files['both']}',weight:0.8}}]"
    eager = run_workflow("text2img", BASE + ["seed=3", loras], output_dir=tmp_path / "eager")
    compiled = run_workflow("text2img", BASE + ["seed=3", loras, "runtime.compile=true"], output_dir=tmp_path / "c",
                            cache=compiled_cache)
    plain = run_workflow("text2img", BASE + ["seed=3"], output_dir=tmp_path / "plain")
    assert max_diff(image(compiled), image(eager)) <= COMPILED_TOLERANCE
    assert max_diff(image(compiled), image(plain)) > 100 * COMPILED_TOLERANCE  # the LoRA is in


def test_the_tiled_decode_runs_through_the_compiled_decoder(compiled_cache, tmp_path):
    tiled = ["width=128", "height=128", "seed=4", "runtime.vae_tiling=true"]
    eager = run_workflow("text2img", BASE + tiled, output_dir=tmp_path / "eager")
    compiled = run_workflow("text2img", BASE + tiled + ["runtime.compile=true"], output_dir=tmp_path / "c",
                            cache=compiled_cache)
    whole = run_workflow("text2img", BASE + tiled[:-1], output_dir=tmp_path / "whole")
    assert max_diff(image(compiled), image(eager)) <= COMPILED_TOLERANCE
    assert max_diff(image(compiled), image(whole)) > 100 * COMPILED_TOLERANCE  # it did decode in tiles


# Noise decoded as it is: the VAE alone (the UNet is not compiled again in float16; minutes on 2 cores)
DECODE_ONLY = """description: decode noise
nodes:
  model:
    type: load_model
    source: ${model.path}
  noise:
    type: init_latents
    vae: model.vae
    width: 64
    height: 64
    seed: ${seed}
  decode: {type: decode, vae: model.vae, latents: noise.latents}
  save: {type: save_image, image: decode.image, prefix: noise}
"""


def test_the_float32_retry_of_an_overflowing_half_precision_vae_runs_through_the_compiled_decoder(overflowing_vae_model,
                                                                                                 tmp_path):
    workflow = tmp_path / "decode_noise.yaml"
    workflow.write_text(DECODE_ONLY)
    args = ["model=tiny", "seed=5", f"model.path={overflowing_vae_model}", "runtime.dtype=float16"]
    eager = run_workflow(str(workflow), args, output_dir=tmp_path / "eager")
    cache = ComponentCache()
    compiled = run_workflow(str(workflow), args + ["runtime.compile=true"], output_dir=tmp_path / "c", cache=cache)
    for result in (eager, compiled):
        assert [f.kind for f in result.record.fallbacks if f.node == "decode"] == ["float32_retry"]
    assert torch.isfinite(compiled.outputs["decode"]["image"].pixels).all()
    # (the retried pixels are given back in float16: 2^-11 apart near 1.0)
    assert max_diff(image(compiled), image(eager)) <= 1e-3
    # the retry decoded a float32 copy: the cached compiled VAE is still the float16 one
    vae = next(cache.get(key, load=None) for key in cache.keys() if key[1] == "vae")
    assert vae.dtype == torch.float16 and isinstance(vae.decoder, torch._dynamo.eval_frame.OptimizedModule)
