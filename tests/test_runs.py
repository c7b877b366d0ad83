"""Running workflows: the component cache, reproducible PNGs, safety checks and model sources."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
from PIL import Image

from sdflow.api import run_workflow
from sdflow.engine import ComponentCache, ValidationError
from sdflow.nodes.records import SafetyReport, SafetySkipped


def test_chain_loads_each_weight_once_and_a_second_run_loads_nothing(tmp_path):
    cache = ComponentCache()
    first = run_workflow("chain", ["model=tiny", "steps=3", "upscale_steps=2"], output_dir=tmp_path / "a", cache=cache)
    per_component = Counter((source, component) for source, component, *_ in cache.loaded_keys)
    assert per_component and set(per_component.values()) == {1}, per_component
    sd_components = {c for s, c in per_component if "tiny-v" in s}
    upscaler_components = {c for s, c in per_component if "tiny-x4" in s}
    assert sd_components == {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    assert upscaler_components == {"unet", "vae", "text_encoder", "tokenizer", "scheduler", "low_res_scheduler"}
    # img2img asked for the same UNet and VAE again and got them from the cache.
    assert cache.stats.hits == 2
    assert [p.name for p in first.saved] == ["1_text2img_000_seed0.png", "2_img2img_000_seed0.png",
                                             "3_upscaled_000_seed0.png"]
    assert Image.open(first.saved[2]).size == (256, 256)  # 64 px x4

    loads = cache.stats.loads
    run_workflow("chain", ["model=tiny", "steps=3", "upscale_steps=2", "seed=5"], output_dir=tmp_path / "b", cache=cache)
    assert cache.stats.loads == loads
    assert cache.stats.bytes_held > 0


def test_cache_evicts_least_recently_used_past_its_budget(tmp_path):
    cache = ComponentCache(budget_bytes=1)
    run_workflow("text2img", ["model=tiny", "steps=2"], output_dir=tmp_path, cache=cache)
    assert cache.stats.evictions > 0
    assert cache.stats.bytes_held <= max(size for _, size in cache._entries.values()) or len(cache) == 1


def read_metadata(path):
    with Image.open(path) as image:
        return json.loads(image.text["sdflow"]), image.text["sdflow_workflow"]


def test_png_records_workflow_seeds_models_and_versions_and_reruns_are_identical(tmp_path):
    args = ["model=tiny", "steps=3", "seed=[4,9]", "prompt=a red circle", "scheduler=euler"]
    first = run_workflow("text2img", args, output_dir=tmp_path / "a")
    second = run_workflow("text2img", args, output_dir=tmp_path / "b")
    assert [p.name for p in first.saved] == ["text2img_000_seed4.png", "text2img_001_seed9.png"]
    for a, b in zip(first.saved, second.saved):
        assert a.read_bytes() == b.read_bytes()
    meta, workflow_yaml = read_metadata(first.saved[1])
    assert meta["image"]["seed"] == 9 and meta["seeds"]["noise"] == [4, 9]
    assert meta["models"]["model"]["source"] == "builtin:tiny"
    assert set(meta["versions"]) == {"sdflow", "diffusers", "torch", "transformers"}
    assert meta["prompts"]["prompt"]["prompt"] == "a red circle"
    assert meta["denoise"]["denoise"]["scheduler"] == "EulerDiscreteScheduler"
    assert "prompt: a red circle" in workflow_yaml and "${" not in workflow_yaml
    assert not list((tmp_path / "a").glob("*.tmp"))  # written aside, renamed into place


def test_resolved_workflow_from_a_png_runs_again_to_the_same_image(tmp_path):
    first = run_workflow("text2img", ["model=tiny", "steps=3", "seed=12"], output_dir=tmp_path / "a")
    _, workflow_yaml = read_metadata(first.saved[0])
    replay = tmp_path / "replay.yaml"
    replay.write_text(workflow_yaml)
    again = run_workflow(str(replay), [], output_dir=tmp_path / "b")
    with Image.open(first.saved[0]) as a, Image.open(again.saved[0]) as b:
        assert a.tobytes() == b.tobytes()


def add_safety_checker(folder, flag_everything: bool):
    """A tiny safety checker whose concept thresholds flag every image (or none)."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                       "image_size": 32, "patch_size": 4},
        projection_dim=32,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        threshold = -2.0 if flag_everything else 2.0  # cosine similarity lies in [-1, 1]
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    checker.save_pretrained(folder / "safety_checker", safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder / "feature_extractor")
    index = json.loads((folder / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    (folder / "model_index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("flag_everything", [True, False])
def test_safety_checker_reports_flagged_images(tiny_sd, tmp_path, caplog, flag_everything):
    folder = tmp_path / "with-checker"
    shutil.copytree(tiny_sd, folder)
    add_safety_checker(folder, flag_everything)
    result = run_workflow("text2img", ["model=tiny", f"model.path={folder}", "steps=2", "seed=[1,2]"],
                          output_dir=tmp_path / "out")
    report = result.record.of(SafetyReport)["safety"]
    assert report.flagged == [flag_everything, flag_everything]
    pixels = result.outputs["safety"]["image"].pixels
    if flag_everything:
        assert float(pixels.abs().max()) == 0.0
        assert "flagged by the safety checker" in caplog.text
        meta, _ = read_metadata(result.saved[0])
        assert meta["image"]["flagged"] is True
    else:
        assert float(pixels.abs().max()) > 0.0


def test_model_without_safety_checker_skips_it_explicitly(tmp_path):
    result = run_workflow("text2img", ["model=tiny", "steps=2"], output_dir=tmp_path)
    assert result.record.of(SafetySkipped)["safety"].reason == "the model has no safety checker"


def test_pickle_weights_are_refused_unless_allowed(tiny_sd, tmp_path):
    from diffusers import UNet2DConditionModel

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_sd, folder)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    unet.save_pretrained(folder / "unet", safe_serialization=False)
    args = ["model=tiny", f"model.path={folder}", "steps=2"]
    cache = ComponentCache()
    with pytest.raises(ValidationError) as excinfo:  # refused before anything loads
        run_workflow("text2img", args, output_dir=tmp_path / "a", cache=cache)
    assert "node 'model', field 'source'" in str(excinfo.value) and "allow_pickle=true" in str(excinfo.value)
    assert cache.stats.loads == 0
    result = run_workflow("text2img", args + ["allow_pickle=true"], output_dir=tmp_path / "b", cache=ComponentCache())
    assert len(result.saved) == 1
