"""runtime.offload (accelerate's hooks, as diffusers' enable_model_cpu_offload / enable_sequential_cpu_offload) and
runtime.dtype=bfloat16, run on this CPU: the hooks really move the weights (sequential: they rest on ``meta``
between layers; model: each call sends the model before back), the pixels stay those of the plain run, an
offloaded model is loaded once for every job of a sweep, and a LoRA goes onto a copy put back on the same hooks.
What offloading saves on a GPU is measured by bench/memory_modes.py."""

from __future__ import annotations

import pytest
import torch

from parity import as_nhwc, max_diff
from sdflow.api import compose_config, plan_workflow, run_workflow
from sdflow.engine import ComponentCache, ValidationError
from sdflow.nodes import offload
from sdflow.nodes.runtime_facts import check_runtime
from sdflow.run.sweep import Job, Sweep

BASE = ["model=tiny", "prompt=a lighthouse at dusk", "steps=2", "runtime.output_cache=false"]


def pixels(result):
    return as_nhwc(result.outputs["decode"]["image"].pixels)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return run_workflow("text2img", BASE + ["seed=[3,4]"], output_dir=tmp_path_factory.mktemp("plain"),
                        cache=ComponentCache())


def cached_module(cache: ComponentCache, component: str):
    (key,) = [key for key in cache.keys() if key[1] == component]
    return cache.get(key, load=lambda: pytest.fail(f"the {component} was not kept"))


def test_sequential_offload_keeps_every_weight_off_the_device_between_layers_with_the_same_pixels(plain, tmp_path):
    cache = ComponentCache()
    result = run_workflow("text2img", BASE + ["seed=[3,4]", "runtime.offload=sequential"], output_dir=tmp_path,
                          cache=cache)
    assert max_diff(pixels(result), pixels(plain)) <= 1e-6
    assert result.record.runtime["offload"] == "sequential"
    for component in ("unet", "vae", "text_encoder"):
        module = cached_module(cache, component)
        # the weights are nowhere but in the hooks' CPU copy until a layer runs
        assert {p.device.type for p in module.parameters()} == {"meta"}, component
        assert offload.offload_mode(module) == ("sequential", torch.device("cpu"))
    # a second job of another seed reuses the offloaded modules (loaded once) and still draws its own image
    loads = cache.stats.loads
    again = run_workflow("text2img", BASE + ["seed=5", "runtime.offload=sequential"], output_dir=tmp_path / "again",
                         cache=cache)
    assert cache.stats.loads == loads
    assert max_diff(pixels(again), pixels(plain)[:1]) > 0.05


def test_model_offload_moves_one_whole_model_at_a_time_with_the_same_pixels(plain, tmp_path, monkeypatch):
    hook_class = offload.one_model_on_device_hook()
    calls, sent_back = [], []
    original_pre_forward, original_to = hook_class.pre_forward, torch.nn.Module.to

    def spying_pre_forward(self, module, *args, **kwargs):
        calls.append(type(module).__name__)
        return original_pre_forward(self, module, *args, **kwargs)

    def spying_to(module, *args, **kwargs):
        if args == ("cpu",) and calls:
            sent_back.append((type(module).__name__, calls[-1]))
        return original_to(module, *args, **kwargs)

    monkeypatch.setattr(hook_class, "pre_forward", spying_pre_forward)
    monkeypatch.setattr(torch.nn.Module, "to", spying_to)
    cache = ComponentCache()
    result = run_workflow("text2img", BASE + ["seed=[3,4]", "runtime.offload=model"], output_dir=tmp_path, cache=cache)
    assert max_diff(pixels(result), pixels(plain)) <= 1e-6
    assert result.record.runtime["offload"] == "model"
    # the text encoder (prompt, negative prompt), the UNet at each scheduler step, the VAE's decode; the first call
    # of each sends the model before it back
    assert [name for i, name in enumerate(calls) if i == 0 or calls[i - 1] != name] == \
        ["CLIPTextModel", "UNet2DConditionModel", "AutoencoderKL"]
    assert calls.count("CLIPTextModel") == 2 and calls.count("UNet2DConditionModel") >= 2
    assert sent_back == [("CLIPTextModel", "UNet2DConditionModel"), ("UNet2DConditionModel", "AutoencoderKL")]
    assert offload.offload_mode(cached_module(cache, "unet"))[0] == "model"


def test_offloaded_models_compose_with_a_fused_sweep_and_load_once(plain):
    jobs = []
    for num, seed in enumerate((3, 4)):
        config = compose_config(BASE + [f"seed={seed}", "runtime.offload=model"])
        jobs.append(Job(num, (f"seed={seed}",), config, plan_workflow(config)))
    sweep = Sweep(jobs, max_batch=8)
    batch = sweep.batch_of[0]
    assert sweep.batch_of[1] is batch  # the two jobs share one batch
    cache = ComponentCache()
    batch.run(cache)
    assert cache.stats.loads == 5
    fused = batch.images[("save", "image")].pixels  # (what the save node was given: after the safety check)
    assert max_diff(as_nhwc(fused), as_nhwc(plain.outputs["safety"]["image"].pixels)) <= 1e-6


def test_bfloat16_stays_near_the_float32_image_and_is_recorded(plain, tmp_path):
    result = run_workflow("text2img", BASE + ["seed=[3,4]", "runtime.dtype=bfloat16"], output_dir=tmp_path)
    assert result.outputs["decode"]["image"].pixels.dtype == torch.bfloat16
    assert result.record.runtime["dtype"] == "bfloat16"
    # measured on the tiny model: 0.017 at most, 0.003 on average (8 bits of mantissa against float32's 23)
    difference = max_diff(pixels(result), pixels(plain))
    assert 1e-4 < difference <= 0.05


@pytest.mark.parametrize("value", ["cpu", "maybe", True])
def test_an_unknown_offload_mode_is_refused_before_anything_loads(tmp_path, value):
    (problem,) = check_runtime({"offload": value})
    assert problem.field == "runtime.offload" and "none, model, sequential" in problem.message
    with pytest.raises(ValidationError, match="runtime.offload"):
        run_workflow("text2img", ["model=tiny", f"runtime.offload={value}"], output_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_offload_with_compile_is_refused_naming_both():
    (problem,) = check_runtime({"offload": "model", "compile": True})
    assert problem.field == "runtime.offload" and "runtime.compile" in problem.message
    assert check_runtime({"offload": "none", "compile": True}) == []
