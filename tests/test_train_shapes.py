"""The default model's training script: phases are seeded on their own and replay exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train" / "train_shapes.py"


def run_script(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "models"), "--record", str(tmp_path / "run.json"), *args],
        capture_output=True, text=True, timeout=300,
    )


def text_weights(tmp_path: Path) -> dict[str, torch.Tensor]:
    return load_file(tmp_path / "models" / "shapes" / "text_encoder" / "model.safetensors")


@pytest.mark.slow
def test_text_phase_replays_from_seed_and_steps(tmp_path):
    runs = {}
    for name, seed in [("a", "0"), ("b", "0"), ("c", "1")]:
        out = tmp_path / name
        result = run_script(out, "--phases", "text", "--steps", "15", "--seed", seed)
        assert result.returncode == 0, result.stderr[-2000:]
        runs[name] = text_weights(out)
    key = "encoder.layers.0.self_attn.q_proj.weight"
    assert runs["a"][key].dtype == torch.float16  # shipped as fp16
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not torch.equal(runs["a"][key], runs["c"][key])
    record = json.loads((tmp_path / "a" / "run.json").read_text())
    assert record["phases"]["text"]["steps"] == 15 and record["phases"]["text"]["seed"] == 0
    # The tokenizer the encoder was trained with is written beside it, in CLIP's file format.
    assert (tmp_path / "a" / "models" / "shapes" / "tokenizer" / "vocab.json").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--phases", "text,paint"], "unknown phase(s) ['paint']"),
        (["--phases", "text,vae", "--steps", "3"], "one value per phase"),
        (["--phases", "unet", "--steps", "1"], "run the phase that writes it first"),
    ],
)
def test_bad_phase_arguments_are_refused_with_a_reason(tmp_path, args, message):
    result = run_script(tmp_path, *args)
    assert result.returncode != 0
    assert message in result.stderr


def test_summary_positions_start_at_the_first_eos():
    sys.path.insert(0, str(ROOT / "train"))
    from train_shapes import summary_mask

    eos = 9
    ids = torch.tensor([[1, 5, 6, eos, eos, eos], [1, 5, 6, 7, 8, eos]])
    mask = summary_mask(ids, eos)
    assert mask.tolist() == [[False, False, False, True, True, True], [False, False, False, False, False, True]]
