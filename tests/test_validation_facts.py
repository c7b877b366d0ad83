"""Nothing lost, nothing silent: typed facts, every problem in one pass, files and devices checked before anything
loads, and values a user would not expect (NaN, a sideways photo, a 16-bit PNG, a run that saves nothing) refused."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from sdflow.api import compose_config, plan_workflow, run_workflow
from sdflow.engine import (ComponentCache, Input, NodeRunError, NodeSpec, PortType, RunContext, ValidationError,
                           parse_workflow, validate)
from sdflow.nodes import types
from sdflow.nodes.images import load_image
from sdflow.nodes.mask import load_mask
from sdflow.nodes.runtime_facts import check_hardware, check_runtime
from sdflow.run import check_machine, plan
from test_validation import CYCLE, GOOD, problems_of


def flow_with_source(folder, allow_pickle: bool = False) -> str:
    return GOOD.replace("source: builtin:tiny", f"source: {folder}\n    allow_pickle: {str(allow_pickle).lower()}")


# 1. Typed facts ---------------------------------------------------------------------------------------------------

def test_checks_hand_typed_facts_read_from_the_models_configs(tiny_sd):
    plan = plan_workflow(compose_config(["workflow=text2img", "model=tiny", "seed=[3,4]"]))
    model = plan.nodes["model"].meta
    unet_config = json.loads((tiny_sd / "unet" / "config.json").read_text())
    assert isinstance(model["unet"], types.UNetFacts) and model["unet"].in_channels == unet_config["in_channels"]
    assert model["unet"].cross_attention_dim == unet_config["cross_attention_dim"]
    assert isinstance(model["vae"], types.VAEFacts) and model["vae"].scale_factor == 2
    assert model["safety_checker"] is None  # the tiny model has none: no facts, not an empty dict
    latents = plan.nodes["noise"].meta["latents"]
    assert latents == types.LatentFacts(kind="noise", channels=4, scaling_factor=model["vae"].scaling_factor, count=2,
                                       size=(64, 64))
    assert plan.nodes["denoise"].meta["latents"].kind == "denoised"
    with pytest.raises(dataclasses.FrozenInstanceError):
        latents.channels = 8


def test_every_port_type_names_a_frozen_facts_dataclass():
    ports = [value for value in vars(types).values() if isinstance(value, PortType)]
    assert len(ports) >= 15
    for port in ports:
        assert dataclasses.is_dataclass(port.facts) and port.facts.__dataclass_params__.frozen, port


FACT = PortType("FACT", "a test port", facts=types.ImageFacts)
TEST_FLOW = """
nodes:
  a:
    type: source
  b:
    type: sink
    thing: a.thing
"""


def test_a_check_handing_a_misspelt_output_or_an_untyped_dict_is_refused():
    def registry(check):
        return {"source": NodeSpec("source", "makes a thing", lambda ctx: {}, outputs={"thing": FACT}, check=check),
                "sink": NodeSpec("sink", "writes a thing", lambda ctx, thing: {}, inputs={"thing": Input(FACT)})}

    workflow = parse_workflow(TEST_FLOW, "test.yaml")
    validate(workflow, registry(lambda params, inputs, ctx: {"thing": types.ImageFacts(width=8)}))
    with pytest.raises(TypeError, match="returned facts for 'thnig', which is not one of its outputs"):
        validate(workflow, registry(lambda params, inputs, ctx: {"thnig": types.ImageFacts(width=8)}))
    with pytest.raises(TypeError, match="returned dict for output 'thing' \\(FACT\\), which carries ImageFacts"):
        validate(workflow, registry(lambda params, inputs, ctx: {"thing": {"width": 8}}))


# 2. One pass ------------------------------------------------------------------------------------------------------

def test_static_checks_run_beside_structural_problems_all_reported_once():
    broken = GOOD.replace("width: 64", "width: 63") + "  extra:\n    type: lod_image\n    path: x.png\n"
    messages = problems_of(broken)
    assert len(messages) == 2, messages
    assert any("unknown node type 'lod_image'; did you mean 'load_image'" in m for m in messages)
    assert any("node 'noise', field 'width'" in m and "multiple of 2" in m for m in messages)

    with_cycle = problems_of(GOOD.replace("width: 64", "width: 63") + CYCLE.lstrip("\n"))
    assert len(with_cycle) == 2 and any("the workflow has a cycle" in m for m in with_cycle), with_cycle


def test_a_node_downstream_of_a_broken_one_is_not_checked_again():
    # 'prompt' refers to a missing node; the denoise that reads its embeddings is skipped, not misreported.
    broken = GOOD.replace("tokenizer: model.tokenizer", "tokenizer: modle.tokenizer").replace("steps: 3", "steps: 3\n"
                                                                                             "    strength: 0.5")
    messages = problems_of(broken)
    assert len(messages) == 1 and "refers to node 'modle'" in messages[0], messages
    assert len(set(messages)) == len(messages)


# 3. Before anything exists ----------------------------------------------------------------------------------------

def test_cuda_on_a_machine_without_it_is_a_validation_error_naming_the_runtime_key(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_runtime({"device": "cuda", "dtype": "float16"}) == []  # the values are right on any machine
    (problem,) = check_hardware({"device": "cuda", "dtype": "float16"})  # ... this machine cannot run them
    assert problem.field == "runtime.device" and "runtime=cuda" in str(problem) and "runtime=cpu" in str(problem)
    config = compose_config(["model=tiny", "runtime=cuda"])
    with pytest.raises(ValidationError, match="finds no CUDA GPU"):
        plan(None, config)
    assert plan(None, config, hardware=False).order  # a Ray/Slurm driver: its workers check the hardware
    (dtype,) = check_runtime({"device": "cpu", "dtype": "float17"})
    assert dtype.field == "runtime.dtype" and "float16" in dtype.message
    assert check_runtime({"device": "cpu", "dtype": "float32"}) == []


class FakeGPU:
    """torch.cuda as a worker with one GPU would answer it: ``free`` bytes free, bfloat16 or not."""

    def __init__(self, monkeypatch, free: int, bf16: bool = True):
        import torch

        for name, answer in {"is_available": lambda: True, "device_count": lambda: 1,
                             "is_bf16_supported": lambda: bf16, "get_device_name": lambda device=None: "Tiny GPU",
                             "mem_get_info": lambda device=None: (free, 2 * free)}.items():
            monkeypatch.setattr(torch.cuda, name, answer)


def test_a_worker_checks_its_gpu_has_room_for_the_unet_and_computes_in_its_dtype(monkeypatch, tiny_sd):
    from safetensors import safe_open

    with safe_open(tiny_sd / "unet" / "diffusion_pytorch_model.safetensors", "pt") as weights:
        parameters = sum(int(np.prod(weights.get_slice(name).get_shape())) for name in weights.keys())
    config = compose_config(["model=tiny", "runtime=cuda"])  # float16 by default: 2 bytes a parameter
    planned = plan(None, config, hardware=False)
    FakeGPU(monkeypatch, free=2 * parameters)
    assert check_machine(planned, config) == []
    FakeGPU(monkeypatch, free=2 * parameters - 1)
    (room,) = check_machine(planned, config)
    assert room.field == "runtime.device" and "Tiny GPU (cuda) has" in room.message and "at least" in room.message
    fp32 = compose_config(["model=tiny", "runtime=cuda", "runtime.dtype=float32"])
    FakeGPU(monkeypatch, free=3 * parameters)  # room in float16, not in float32
    (room,) = check_machine(planned, fp32)
    assert "runtime.dtype=float16" in room.message
    bf16 = compose_config(["model=tiny", "runtime=cuda", "runtime.dtype=bfloat16"])
    FakeGPU(monkeypatch, free=10 * parameters, bf16=False)
    (dtype,) = check_machine(planned, bf16)
    assert dtype.field == "runtime.dtype" and "does not compute in bfloat16" in dtype.message
    assert check_machine(planned, compose_config(["model=tiny"])) == []  # a CPU run asks nothing


def test_checking_a_cpu_runtime_imports_no_torch():
    code = ("import json, sys\nfrom sdflow.nodes.runtime_facts import check_runtime\n"
            "assert check_runtime({'device': 'cpu', 'dtype': 'float32'}) == []\nprint('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stderr[-2000:]


def test_a_truncated_weight_file_is_caught_at_validation(tiny_sd, tmp_path):
    broken = shutil.copytree(tiny_sd, tmp_path / "broken")
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    (message,) = problems_of(flow_with_source(broken))
    assert "node 'model', field 'source'" in message
    assert "'unet/diffusion_pytorch_model.safetensors' is truncated or corrupt" in message
    garbage = broken / "vae" / "diffusion_pytorch_model.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    assert any("'vae/diffusion_pytorch_model.safetensors' is corrupt" in m for m in problems_of(flow_with_source(broken)))


def test_pickle_only_weights_are_refused_at_validation_unless_allowed(tiny_sd, tmp_path):
    import torch
    from safetensors.torch import load_file

    pickled = shutil.copytree(tiny_sd, tmp_path / "pickled")
    weights = pickled / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), pickled / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    (message,) = problems_of(flow_with_source(pickled))
    assert "'unet' has only pickle weights (diffusion_pytorch_model.bin)" in message and "allow_pickle=true" in message
    assert problems_of(flow_with_source(pickled, allow_pickle=True)) == []
    (pickled / "unet" / "diffusion_pytorch_model.bin").unlink()
    (missing,) = problems_of(flow_with_source(pickled))
    assert "'unet' has no weights file" in missing


def sdflow_cli(cwd, *args, **env):
    return subprocess.run([sys.executable, "-m", "sdflow.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def test_a_hub_id_that_cannot_be_downloaded_fails_at_validation_at_once(tmp_path):
    started = time.monotonic()
    run = sdflow_cli(tmp_path, "model=tiny", "model.path=someone/not-downloaded-model", HF_HUB_OFFLINE="0",
                     HF_HUB_CACHE=str(tmp_path / "hub"))
    assert run.returncode == 2, run.stderr[-2000:]
    assert "node 'model', field 'source'" in run.stderr
    assert "cannot be reached" in run.stderr or "does not exist" in run.stderr  # (offline here; online, a 404)
    assert time.monotonic() - started < 20  # the hub client's retries took ~25 s, at load time
    assert not list(tmp_path.rglob("*.png"))


def test_a_cached_hub_model_loads_from_the_cache_when_the_hub_cannot_be_reached(tiny_sd, tmp_path):
    repo = tmp_path / "hub" / "models--sdflow-test--tiny"
    shutil.copytree(tiny_sd, repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    started = time.monotonic()
    run = sdflow_cli(tmp_path, "model=tiny", "model.path=sdflow-test/tiny", "steps=1", "hydra.run.dir=out",
                     HF_HUB_OFFLINE="0", HF_HUB_CACHE=str(tmp_path / "hub"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(list((tmp_path / "out").glob("*.png"))) == 1
    assert time.monotonic() - started < 90  # five components x ~25 s of retries before


# 4. Nothing silent ------------------------------------------------------------------------------------------------

def test_nan_and_infinity_are_refused_as_parameter_values():
    (nan,) = problems_of(GOOD.replace("steps: 3", "steps: 3\n    guidance: .nan"))
    assert "node 'denoise', field 'guidance': expected a finite number, given nan" in nan
    (listed,) = problems_of(GOOD.replace("steps: 3", "steps: 3\n    guidance: ${guidance}"),
                            {"guidance": [7.5, float("inf")]})
    assert "list element 1 (inf): expected a finite number" in listed and "guidance=..." in listed


def test_a_workflow_that_saves_nothing_is_refused():
    without_save = GOOD[: GOOD.index("  write:")]
    (message,) = problems_of(without_save)
    assert "the workflow writes nothing" in message and "add a save_image node" in message


def read_image(path, **size) -> np.ndarray:
    """load_image's pixels as [H, W, 3] uint8, as the node hands them on."""
    ctx = RunContext(cache=ComponentCache())
    pixels = load_image(ctx, str(path), size.get("width"), size.get("height"))["image"].pixels
    return (pixels[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def test_load_image_turns_a_photo_upright_by_its_exif_orientation(tmp_path):
    stored = Image.new("RGB", (64, 32), (255, 0, 0))
    stored.paste((0, 0, 255), (32, 0, 64, 32))  # stored: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": the camera was held upright
    stored.save(tmp_path / "photo.png", exif=exif)
    pixels = read_image(tmp_path / "photo.png")
    assert pixels.shape == (64, 32, 3)  # shown 32 wide, 64 high
    assert tuple(pixels[5, 16]) == (255, 0, 0) and tuple(pixels[60, 16]) == (0, 0, 255)  # red on top
    flow = GOOD + f"  photo:\n    type: load_image\n    path: {tmp_path / 'photo.png'}\n"
    plan = validate(parse_workflow(textwrap.dedent(flow), "flow.yaml"))
    assert (plan.nodes["photo"].meta["image"].width, plan.nodes["photo"].meta["image"].height) == (32, 64)


def test_load_image_reads_16_bit_and_other_modes_as_they_look(tmp_path):
    gray = np.full((16, 16), 32768, dtype=np.uint16)  # mid-gray, 16 bits
    Image.fromarray(gray).save(tmp_path / "gray16.png")
    assert abs(int(read_image(tmp_path / "gray16.png")[0, 0, 0]) - 128) <= 1  # clipped to 8 bits it read 255
    mask = load_mask(RunContext(cache=ComponentCache()), str(tmp_path / "gray16.png"), None, None)["mask"].pixels
    assert abs(float(mask[0, 0, 0, 0]) - 0.5) < 0.01  # (clipped: 1.0, repaint everything)

    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 8, 16))  # left half transparent (black underneath)
    rgba.save(tmp_path / "rgba.png")
    pixels = read_image(tmp_path / "rgba.png")
    assert tuple(pixels[0, 0]) == (255, 255, 255) and tuple(pixels[0, 12]) == (255, 0, 0)

    palette = rgba.convert("P")
    palette.info["transparency"] = palette.getpixel((0, 0))
    palette.save(tmp_path / "palette.png", transparency=palette.getpixel((0, 0)))
    assert tuple(read_image(tmp_path / "palette.png")[0, 0]) == (255, 255, 255)

    Image.new("LA", (16, 16), (40, 0)).save(tmp_path / "la.png")
    assert tuple(read_image(tmp_path / "la.png")[0, 0]) == (255, 255, 255)

    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    cyan = read_image(tmp_path / "cmyk.jpg")[8, 8].astype(int)
    assert cyan[0] < 20 and cyan[1] > 235 and cyan[2] > 235, cyan


@pytest.fixture
def nan_unet_model(tiny_sd, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    broken = shutil.copytree(tiny_sd, tmp_path / "nan_unet")
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(weights).items()}, weights)
    return broken


def test_nan_weights_stop_the_run_at_the_node_that_made_them_not_as_a_black_png(nan_unet_model, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(NodeRunError) as excinfo:
        run_workflow("text2img", ["model=tiny", f"model.path={nan_unet_model}", "steps=1"], output_dir=out)
    message = str(excinfo.value)
    assert "node 'denoise' (denoise) failed" in message and "NaN/Inf" in message and "'latents'" in message
    assert "\n" not in message
    assert not list(out.rglob("*.png")) if out.exists() else True


def test_a_half_precision_vae_that_overflows_decodes_again_in_float32(overflowing_vae_model, tmp_path):
    import torch

    result = run_workflow("text2img", ["model=tiny", f"model.path={overflowing_vae_model}", "steps=1", "runtime.dtype=float16"],
                          output_dir=tmp_path / "out")
    assert any(f.node == "decode" and f.kind == "float32_retry" and "float32" in f.detail
               for f in result.record.fallbacks), result.record.fallbacks
    assert len(result.saved) == 1
    assert torch.isfinite(result.outputs["decode"]["image"].pixels).all()
