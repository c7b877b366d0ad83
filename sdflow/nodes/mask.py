"""load_mask: read an inpainting mask (white = repaint) from an image file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..engine import Param, RunContext, node
from .images import GRAY_WIDE, check_load_image, sixteen_bit, to_rgb
from .types import MASK, Mask


def check_load_mask(params, inputs_meta, ctx):
    meta = check_load_image(params, inputs_meta, ctx)  # same file and size checks as an image
    return {"mask": meta["image"]} if meta else {}


@node(
    "load_mask",
    "Read a mask image file as one grayscale channel in [0, 1] (white = repaint), optionally resized.",
    outputs={"mask": MASK},
    params={
        "path": Param(str, doc="mask image file; any mode, read as grayscale", role="input_file"),
        "width": Param(int, None, nullable=True, min=8, max=8192, doc="resize to this width (default: keep)"),
        "height": Param(int, None, nullable=True, min=8, max=8192, doc="resize to this height (default: keep)"),
    },
    check=check_load_mask,
)
def load_mask(ctx: RunContext, path: str, width, height):
    import torch

    with Image.open(Path(path).expanduser()) as img:
        img.load()
        mask = ImageOps.exif_transpose(img)  # upright as shown, like its image (and as check_load_image sizes it)
        if mask.mode in GRAY_WIDE:  # 16-bit: scaled to 8 bits, not clipped to white (repaint everything)
            mask = to_rgb(mask, sixteen_bit(img))
    if width or height:  # resized before the grayscale conversion, as diffusers' mask processor does
        mask = mask.resize((width or mask.width, height or mask.height), Image.LANCZOS)
    array = np.array(mask.convert("L")).astype(np.float32) / 255.0
    return {"mask": Mask(torch.from_numpy(array)[None, None].to(ctx.device))}
