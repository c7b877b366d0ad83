"""Control maps made from a picture, offline: canny edges (numpy, after OpenCV's cv2.Canny) and DPT depth.

OpenCV is not a dependency (it is large, and sdflow needs only this one filter of it), so canny is written
here in numpy, step for step as OpenCV's: 3x3 Sobel gradients per colour channel (the strongest one per pixel, as cv2.Canny takes a colour
image), the L1 magnitude cv2.Canny uses by default, its non-maximum suppression (fixed-point angles, its tie rules), then
hysteresis (weak edges kept where they touch a strong one, 8-connected). Checked once against
opencv-python-headless 5.1.0.95: the same edges on 40 random images of random sizes and thresholds.
Depth follows transformers' depth-estimation pipeline, which diffusers' ControlNet examples use: the DPT's
prediction resized (bicubic) to the picture's size and scaled from its minimum (black) to its maximum (white).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch


def _sobel(channel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3x3 Sobel derivatives of one channel, the border repeated (cv2.Canny's BORDER_REPLICATE)."""
    p = np.pad(channel, 1, mode="edge")
    dx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    dy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return dx, dy


TG22 = int(0.4142135623730950488016887242097 * (1 << 15) + 0.5)  # tan(22.5 deg) in cv2.Canny's fixed point


def _thin(magnitude: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Non-maximum suppression as cv2.Canny does it: a pixel stays where it beats its two neighbours across the
    edge (strictly the one before, at least the one after; diagonals strictly both), outside the image being 0."""
    m = np.pad(magnitude, 1)
    h, w = magnitude.shape

    def at(dy_: int, dx_):  # the neighbour at (y + dy_, x + dx_); dx_ may be an array of -1/+1
        if isinstance(dx_, np.ndarray):
            rows = np.arange(h)[:, None] + 1 + dy_
            cols = np.arange(w)[None, :] + 1 + dx_
            return m[rows, cols]
        return m[1 + dy_: 1 + dy_ + h, 1 + dx_: 1 + dx_ + w]

    xs, ys = np.abs(dx).astype(np.int64), np.abs(dy).astype(np.int64) << 15
    tg22x = xs * TG22
    horizontal = ys < tg22x
    vertical = ~horizontal & (ys > tg22x + (xs << 16))
    diagonal = ~horizontal & ~vertical
    s = np.where((dx < 0) != (dy < 0), -1, 1)  # the diagonal the gradient runs along
    keep = ((horizontal & (magnitude > at(0, -1)) & (magnitude >= at(0, 1)))
            | (vertical & (magnitude > at(-1, 0)) & (magnitude >= at(1, 0)))
            | (diagonal & (magnitude > at(-1, -s)) & (magnitude > at(1, s))))
    return np.where(keep, magnitude, 0.0)


def _hysteresis(strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """Weak pixels joined (8-connected, through other weak pixels) to a strong one, plus the strong ones."""
    edges = strong.copy()
    while True:
        p = np.pad(edges, 1)
        grown = np.zeros_like(edges)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                grown |= p[dy: dy + edges.shape[0], dx: dx + edges.shape[1]]
        grown &= weak | strong
        if (grown == edges).all():
            return edges
        edges = grown


def canny(image: Image.Image, low_threshold: float, high_threshold: float) -> Image.Image:
    """Canny edges as diffusers' ControlNet examples make them (cv2.Canny on the RGB array, then the 1-channel map
    as RGB): white edges on black, thresholds on the L1 gradient magnitude (0-255 levels) of each pixel's strongest
    colour channel."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    gradients = [_sobel(rgb[..., c]) for c in range(3)]
    magnitudes = np.stack([np.abs(dx) + np.abs(dy) for dx, dy in gradients])
    strongest = magnitudes.argmax(axis=0)  # as cv2.Canny on a colour image: each pixel's strongest channel
    dx = np.choose(strongest, [g[0] for g in gradients])
    dy = np.choose(strongest, [g[1] for g in gradients])
    magnitude = _thin(magnitudes.max(axis=0), dx, dy)
    edges = _hysteresis(magnitude > high_threshold, magnitude > low_threshold)
    return Image.fromarray((edges * 255).astype(np.uint8)).convert("RGB")


def dpt_depth(image: Image.Image, depth_estimator, feature_extractor) -> Image.Image:
    """A DPT depth map of ``image`` at its size, as transformers' depth-estimation pipeline gives it: the prediction
    resized by the processor's post-processing, scaled to 0-255 by its minimum and maximum (white = near)."""
    import torch

    pixel_values = feature_extractor(images=[image], return_tensors="pt").pixel_values
    with torch.no_grad():
        outputs = depth_estimator(pixel_values.to(depth_estimator.device, depth_estimator.dtype))
    depth = feature_extractor.post_process_depth_estimation(outputs, [(image.height, image.width)])[0]["predicted_depth"]
    array = depth.float().cpu().numpy()
    array = (array - array.min()) / (array.max() - array.min())
    return Image.fromarray((array * 255).astype("uint8")).convert("RGB")


def as_pixels(images: list[Image.Image]) -> torch.Tensor:
    """PIL images of one size as [N, 3, H, W] float32 in [0, 1]."""
    import torch

    return torch.from_numpy(np.stack([np.asarray(i.convert("RGB"), dtype=np.float32) / 255.0 for i in images])
                            ).permute(0, 3, 1, 2)
