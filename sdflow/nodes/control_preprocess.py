"""Control maps made from a picture, offline: canny edges (numpy, after OpenCV's cv2.Canny) and DPT depth.

OpenCV is not a dependency (it is large, and sdflow needs only this one filter of it), so canny is written
here in numpy: 3x3 Sobel gradients per colour channel (the strongest one per pixel, as cv2.Canny takes a colour
image), the L1 magnitude cv2.Canny uses by default, non-maximum suppression along four directions, then
hysteresis (weak edges kept where they touch a strong one, 8-connected).
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
    """3x3 Sobel derivatives of one channel with the border reflected (OpenCV's BORDER_REFLECT_101)."""
    p = np.pad(channel, 1, mode="reflect")
    dx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    dy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return dx, dy


def _thin(magnitude: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Non-maximum suppression: a pixel stays where it is the largest of its two neighbours across the edge."""
    angle = (np.rad2deg(np.arctan2(dy, dx)) + 180.0) % 180.0
    m = np.pad(magnitude, 1)
    h, w = magnitude.shape
    at = {offset: m[1 + offset[0]: 1 + offset[0] + h, 1 + offset[1]: 1 + offset[1] + w]
          for offset in ((0, 1), (0, -1), (1, 1), (-1, -1), (1, 0), (-1, 0), (1, -1), (-1, 1))}
    horizontal = (angle < 22.5) | (angle >= 157.5)  # gradient along x: compare left and right
    rising = (angle >= 22.5) & (angle < 67.5)
    vertical = (angle >= 67.5) & (angle < 112.5)
    falling = (angle >= 112.5) & (angle < 157.5)
    keep = np.zeros_like(magnitude, dtype=bool)
    for mask, (a, b) in ((horizontal, ((0, 1), (0, -1))), (rising, ((1, 1), (-1, -1))),
                         (vertical, ((1, 0), (-1, 0))), (falling, ((1, -1), (-1, 1)))):
        keep |= mask & (magnitude > at[a]) & (magnitude >= at[b])
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
