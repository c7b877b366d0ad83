"""Render a scene to an RGB image with PIL, deterministically from a seed."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from .captions import Scene
from .vocabulary import COLOURS

# Geometry on a 64-pixel canvas; other sizes scale it. Positions sit 16 px apart so the judge's
# nearest-centre read keeps a wide margin even with jitter.
POSITION_CENTRES: dict[str, tuple[float, float]] = {
    "left": (16.0, 32.0),
    "right": (48.0, 32.0),
    "top": (32.0, 16.0),
    "bottom": (32.0, 48.0),
    "center": (32.0, 32.0),
}
# Half-extent in pixels: small shapes are ~14 px across, large ~26 px, a gap the judge reads easily.
SIZE_RADII: dict[str, float] = {"small": 7.0, "large": 13.0}
JITTER_POSITION = 2.0
JITTER_RADIUS = 1.0


def render(scene: Scene, seed: int = 0, size: int = 64) -> Image.Image:
    """Draw ``scene`` on a ``size`` x ``size`` canvas; ``seed`` picks a small position/size jitter.

    The jitter is drawn in 64-px units before scaling, so a scene rendered at 64 and at 256 with
    the same seed has the same geometry (what the upscaler is trained on).
    """
    rng = random.Random(seed)
    cx, cy = POSITION_CENTRES[scene.position]
    cx += rng.uniform(-JITTER_POSITION, JITTER_POSITION)
    cy += rng.uniform(-JITTER_POSITION, JITTER_POSITION)
    r = SIZE_RADII[scene.size] + rng.uniform(-JITTER_RADIUS, JITTER_RADIUS)
    k = size / 64.0
    cx, cy, r = cx * k, cy * k, r * k
    image = Image.new("RGB", (size, size), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif scene.shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif scene.shape == "triangle":
        # Upright isosceles triangle filling the same box as the square: fill ratio 0.5.
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}")
    return image
