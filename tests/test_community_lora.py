"""LoRA files (diffusers and kohya/A1111 formats) through text2img's ``lora`` node (``loras=[{path, weight}]``): parity with StableDiffusionPipeline
after ``load_lora_weights`` + ``fuse_lora(lora_scale=w)``; the weight sweeps without reloading the base, and the
cached base never carries a LoRA into the next job."""

from __future__ import annotations

import diffusers
import pytest
import torch
from safetensors.torch import load_file, save_file

from parity import as_nhwc, assert_parity, generators, max_diff, sd_pipeline
from sdflow.api import run_workflow
from sdflow.engine import ComponentCache, ValidationError
from sdflow.nodes.records import LoraLoad

PROMPT = "a red cat"


@pytest.fixture(scope="module")
def lora_files(tiny_sd, tmp_path_factory):
    """Random LoRAs for the tiny model: UNet only (diffusers' format), and UNet + text encoder in diffusers' format
    and in kohya's. The UNet part is made by peft; the text encoder's by hand."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    folder = tmp_path_factory.mktemp("loras")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False))
    unet_layers = get_peft_model_state_dict(unet)
    diffusers.StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=unet_layers, weight_name="unet.safetensors")
    encoder = load_file(tiny_sd / "text_encoder" / "model.safetensors")
    text = {}
    for key, value in encoder.items():
        if key.endswith("proj.weight") and ".self_attn." in key:
            module = "text_model." + key[: -len(".weight")]
            text[f"text_encoder.{module}.lora_A.weight"] = torch.randn(4, value.shape[1]) * 0.3
            text[f"text_encoder.{module}.lora_B.weight"] = torch.randn(value.shape[0], 4) * 0.3
    both = {**load_file(folder / "unet.safetensors"), **text}
    save_file(both, str(folder / "style.safetensors"))
    kohya = {}
    for key, value in both.items():
        component, rest = key.split(".", 1)
        module, kind = rest.rsplit(".lora_", 1)
        name = ("lora_unet_" if component == "unet" else "lora_te_") + module.replace(".", "_")
        kohya[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value
        kohya[f"{name}.alpha"] = torch.tensor(4.0)
    save_file(kohya, str(folder / "style_kohya.safetensors"))
    return {"unet": folder / "unet.safetensors", "both": folder / "style.safetensors",
            "kohya": folder / "style_kohya.safetensors", "text": text}


@pytest.fixture
def workflow():
    return "text2img"


def sdflow_image(workflow, loras, tmp_path, cache=None, seed=3):
    spec = "[" + ",".join(f"{{path:'{p}',weight:{w}}}" for p, w in loras) + "]"
    result = run_workflow(workflow, ["model=tiny", f"loras={spec}", f"prompt={PROMPT}", f"seed={seed}", "steps=4"],
                          output_dir=tmp_path, cache=cache)
    return as_nhwc(result.outputs["decode"]["image"].pixels), result


@pytest.fixture(scope="module")
def pipe(tiny_sd):
    return sd_pipeline(tiny_sd)


def diffusers_image(pipe, lora=None, weight=1.0, seed=3):
    if lora is not None:
        pipe.load_lora_weights(str(lora), adapter_name="style")
        pipe.fuse_lora(lora_scale=weight)
    try:
        return pipe(prompt=PROMPT, num_inference_steps=4, guidance_scale=7.5, height=64, width=64,
                    generator=generators([seed]), output_type="np").images
    finally:
        if lora is not None:
            pipe.unfuse_lora()
            pipe.unload_lora_weights()


@pytest.mark.parametrize("weight", [0.7, 1.3])
def test_unet_lora_matches_load_lora_weights_and_fuse_lora(pipe, lora_files, workflow, tmp_path, weight):
    ours, result = sdflow_image(workflow, [(lora_files["unet"], weight)], tmp_path)
    theirs = diffusers_image(pipe, lora_files["unet"], weight)
    assert_parity(ours, theirs, diffusers_image(pipe))
    (entry,) = result.record.of(LoraLoad)["lora"].files
    assert entry.weight == weight and entry.name == "unet"


def test_text_encoder_lora_matches_load_lora_weights_and_fuse_lora(pipe, lora_files, workflow, tmp_path):
    """UNet and text encoder through diffusers' own load_lora_weights + fuse_lora (the text encoder's adapter loaded by
    transformers, which needs peft >= 0.22); the same LoRA's UNet part alone is far from it."""
    weight = 0.8
    ours, _ = sdflow_image(workflow, [(lora_files["both"], weight)], tmp_path)
    theirs = diffusers_image(pipe, lora_files["both"], weight)
    assert_parity(ours, theirs, diffusers_image(pipe, lora_files["unet"], weight))


def test_kohya_format_equals_diffusers_format(pipe, lora_files, workflow, tmp_path):
    kohya, _ = sdflow_image(workflow, [(lora_files["kohya"], 0.7)], tmp_path)
    ours, _ = sdflow_image(workflow, [(lora_files["both"], 0.7)], tmp_path)
    assert abs(ours - kohya).max() <= 1e-5
    unet_only, _ = sdflow_image(workflow, [(lora_files["unet"], 0.7)], tmp_path)
    assert abs(ours - unet_only).max() > 1e-2  # the text encoder's part moves the image


def test_weight_sweep_reuses_the_base_and_nothing_leaks(lora_files, workflow, tmp_path):
    cache = ComponentCache()
    plain, _ = sdflow_image(workflow, [], tmp_path, cache)
    loads = cache.stats.loads
    for weight in (0.5, 1.0):
        sdflow_image(workflow, [(lora_files["both"], weight)], tmp_path, cache)
    assert cache.stats.loads == loads  # no base weight loaded again
    again, _ = sdflow_image(workflow, [], tmp_path, cache)
    assert (again == plain).all()  # the cached UNet and text encoder carry no LoRA


def test_a1111_parameters_name_the_lora(lora_files, workflow, tmp_path):
    from PIL import Image

    _, result = sdflow_image(workflow, [(lora_files["both"], 0.7)], tmp_path)
    text = Image.open(result.saved[0]).text["parameters"]
    assert "Lora hashes: \"style: " in text


def test_a_lora_for_another_family_is_named_before_loading(tmp_path, workflow):
    sdxl_lora = tmp_path / "xl.safetensors"
    save_file({"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight":
               torch.zeros(4, 2048)}, str(sdxl_lora))
    with pytest.raises(ValidationError, match=r"made for a UNet attending to 2048-wide text \(SDXL\).*32-wide"):
        run_workflow(workflow, ["model=tiny", f"loras=[{{path:'{sdxl_lora}',weight:1}}]", "prompt=a", "seed=1"])
    not_lora = tmp_path / "unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(1)}, str(not_lora))
    with pytest.raises(ValidationError, match="is not a LoRA"):
        run_workflow(workflow, ["model=tiny", f"loras=['{not_lora}']", "prompt=a", "seed=1"])


def test_reproduce_round_trips_img2img_with_a_lora_and_a_fused_sweep_job(lora_files, tmp_path):
    from PIL import Image

    from sdflow.api import compose_config, plan_workflow
    from sdflow.engine import ComponentCache
    from sdflow.run.sweep import Job, Sweep
    from sdflow.reproduce import reproduce

    picture = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(picture)
    spec = f"[{{path:'{lora_files['both']}',weight:0.7}}]"
    made = run_workflow("img2img", ["model=tiny", f"image={picture}", f"loras={spec}", "strength=0.6", "steps=4",
                                    "seed=5", f"prompt={PROMPT}"], output_dir=tmp_path / "img2img")
    again = reproduce(made.saved[0], output_dir=tmp_path / "again")
    assert again.same_pixels and again.max_difference == 0
    without = reproduce(made.saved[0], ["lora.loras=[]"], output_dir=tmp_path / "without", check_models=False)
    assert without.same_pixels is None  # the LoRA's weight really changes the image that is remade

    jobs = []
    for num, seed in enumerate((1, 2)):
        config = compose_config(["model=tiny", "steps=3", f"seed={seed}", f"prompt={PROMPT}"])
        jobs.append(Job(num, (f"seed={seed}",), config, plan_workflow(config)))
    sweep = Sweep(jobs, max_batch=8)
    job_png = sweep.run_job(1, tmp_path / "sweep" / "1", cache=ComponentCache()).saved[0]
    sweep.run_job(0, tmp_path / "sweep" / "0", cache=ComponentCache())
    from_sweep = reproduce(job_png, output_dir=tmp_path / "again_sweep")
    assert from_sweep.max_difference <= 1  # made alone instead of in its batch: at most one 8-bit level
    assert any("fused sweep batch" in note for note in from_sweep.notes)


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_a_lora_on_an_offloaded_model_gives_the_plain_pixels_and_leaves_the_base_offloaded(lora_files, tmp_path, mode):
    from sdflow.nodes.offload import offload_mode

    spec = f"[{{path:'{lora_files['both']}',weight:0.8}}]"
    args = ["model=tiny", f"loras={spec}", f"prompt={PROMPT}", "seed=3", "steps=4", "runtime.output_cache=false"]
    plain = run_workflow("text2img", args, output_dir=tmp_path / "plain", cache=ComponentCache())
    cache = ComponentCache()
    offloaded = run_workflow("text2img", args + [f"runtime.offload={mode}"], output_dir=tmp_path / mode, cache=cache)
    assert max_diff(as_nhwc(offloaded.outputs["decode"]["image"].pixels),
                    as_nhwc(plain.outputs["decode"]["image"].pixels)) <= 1e-6
    # the LoRA went onto a copy taken off the hooks and put back on the same ones; the cached base stays offloaded
    assert offload_mode(offloaded.outputs["lora"]["unet"])[0] == mode
    (unet_key,) = [key for key in cache.keys() if key[1] == "unet"]
    base = cache.get(unet_key, load=lambda: pytest.fail("the UNet was not kept"))
    assert offload_mode(base)[0] == mode and base is not offloaded.outputs["lora"]["unet"]
