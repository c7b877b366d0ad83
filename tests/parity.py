"""Helpers for parity tests: compare an sdflow image batch with a diffusers pipeline's output."""

from __future__ import annotations

import numpy as np
import torch

TOLERANCE = 1e-4
# Two PNGs of images made in batches of other sizes: a batch computes in other blocks than one image alone, so
# their floats agree within TOLERANCE, not bit for bit (tested where both are floats); an 8-bit level spans 1/255,
# so such floats round to the same level or the next one. Images made in batches of the same make are equal.
ONE_LEVEL = 1 / 255 + 1e-9


def gradient_picture(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """An RGB test picture (float, 0-255): a left-to-right gradient, ``rng``'s noise, a top-to-bottom gradient."""
    gradient = np.linspace(0, 255, size, dtype=np.float32)
    return np.stack([np.tile(gradient, (size, 1)), rng.uniform(0, 255, (size, size)), np.tile(gradient[:, None], (1, size))],
                    axis=-1)


def as_nhwc(pixels: torch.Tensor) -> np.ndarray:
    """sdflow's [N, 3, H, W] in [0, 1] as diffusers' output_type='np' array [N, H, W, 3]."""
    return pixels.detach().float().cpu().permute(0, 2, 3, 1).numpy()


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def assert_parity(ours: np.ndarray, theirs: np.ndarray, moved: np.ndarray | None = None):
    """``ours`` equals ``theirs`` within TOLERANCE; ``moved`` (the setting under test changed) must not."""
    diff = max_diff(ours, theirs)
    assert diff <= TOLERANCE, f"max abs difference {diff:.2e} > {TOLERANCE}"
    if moved is not None:
        moved_diff = max_diff(ours, moved)
        assert moved_diff > 100 * TOLERANCE, (
            f"changing the setting under test moved the output only {moved_diff:.2e}: the test would be blind")


def sd_pipeline(folder):
    """diffusers' StableDiffusionPipeline on a tiny model folder, with no safety checker and no progress bars."""
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
