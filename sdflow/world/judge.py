"""Read a scene back from an image, with no learned weights.

Used to measure what a model drew. Steps, each chosen to survive blur and VAE smearing:
1. background = nearest palette colour to the median border pixel;
2. shape colour = most common nearest-palette colour among pixels that are clearly not background;
3. mask = pixels closer to the shape colour than to the background (a midpoint split, so a blurred
   edge is cut where the original edge was);
4. size from the mask's bounding-box extent, position from the mask centroid, shape from how much of
   the bounding box the mask fills (circle ~0.785, square ~1, triangle ~0.5) and, for the triangle,
   how much narrower its top is than its bottom.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .captions import Scene
from .render import POSITION_CENTRES
from .vocabulary import COLOURS

_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _NAMES], dtype=np.float32)
ATTRIBUTES = ("background", "colour", "shape", "size", "position")


@dataclass
class Reading:
    """What the judge read; ``None`` for an attribute it could not read (e.g. no shape found)."""

    background: str | None
    colour: str | None
    shape: str | None
    size: str | None
    position: str | None
    fill: float = 0.0  # diagnostics
    extent: float = 0.0

    def matches(self, scene: Scene) -> dict[str, bool]:
        return {a: getattr(self, a) == getattr(scene, a) for a in ATTRIBUTES}


def _nearest(pixels: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour for each row of an (N, 3) array."""
    d = ((pixels[:, None, :] - _PALETTE[None, :, :]) ** 2).sum(-1)
    return d.argmin(1)


def _drop_isolated(mask: np.ndarray) -> np.ndarray:
    """Remove mask pixels with no 4-neighbour in the mask (speckle from a model, not a shape)."""
    padded = np.pad(mask, 1)
    neighbours = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return mask & neighbours


def judge(image: Image.Image) -> Reading:
    """Read background, shape colour, shape, size and position from ``image`` (any square size)."""
    if image.size != (64, 64):
        # All thresholds are in 64-px units; a box filter keeps colours and geometry.
        image = image.resize((64, 64), Image.BOX)
    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    bg_idx = int(_nearest(np.median(border, axis=0, keepdims=True))[0])
    flat = a.reshape(-1, 3)
    nearest = _nearest(flat)
    bg = _PALETTE[bg_idx]
    dist_bg = np.sqrt(((flat - bg) ** 2).sum(-1))
    off_bg = nearest != bg_idx
    if off_bg.sum() < 4:
        return Reading(_NAMES[bg_idx], None, None, None, None)
    # Only the pixels farthest from the background vote: a blurred red/yellow edge is orange-ish,
    # and a small shape has as many edge pixels as interior ones.
    far = off_bg & (dist_bg >= 0.6 * dist_bg[off_bg].max())
    fg_idx = int(np.bincount(nearest[far], minlength=len(_NAMES)).argmax())
    fg = _PALETTE[fg_idx]
    mask = (((a - fg) ** 2).sum(-1) < ((a - bg) ** 2).sum(-1))
    mask = _drop_isolated(mask)
    if mask.sum() < 4:
        return Reading(_NAMES[bg_idx], _NAMES[fg_idx], None, None, None)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    h, w = y1 - y0 + 1, x1 - x0 + 1
    extent = float(max(h, w))
    fill = float(mask.sum()) / float(h * w)

    # Triangle test: an upright triangle's top quarter is much narrower than its bottom quarter.
    q = max(1, h // 4)
    top_width = mask[y0 : y0 + q, x0 : x1 + 1].sum(1).mean()
    bottom_width = mask[y1 - q + 1 : y1 + 1, x0 : x1 + 1].sum(1).mean()
    taper = top_width / max(bottom_width, 1e-6)
    if fill < 0.66 or (taper < 0.55 and fill < 0.75):
        shape = "triangle"
    elif fill < 0.89:
        shape = "circle"
    else:
        shape = "square"

    size = "large" if extent >= 20 else "small"
    cy, cx = ys.mean(), xs.mean()
    position = min(POSITION_CENTRES, key=lambda p: (POSITION_CENTRES[p][0] - cx) ** 2 + (POSITION_CENTRES[p][1] - cy) ** 2)
    return Reading(_NAMES[bg_idx], _NAMES[fg_idx], shape, size, position, fill, extent)


def accuracy(readings: list[Reading], scenes: list[Scene]) -> dict[str, float]:
    """Fraction right per attribute and for all five together."""
    rows = [r.matches(s) for r, s in zip(readings, scenes)]
    out = {a: sum(r[a] for r in rows) / len(rows) for a in ATTRIBUTES}
    out["all"] = sum(all(r.values()) for r in rows) / len(rows)
    return out
