"""depth_condition: the depth channel of a depth-to-image UNet, estimated by the model's DPT or read from a file.

Mirrors StableDiffusionDepth2ImgPipeline.prepare_depth_map: the depth map is resized (bicubic) to the
latents' size and normalized per image to [-1, 1], then concatenated to the latents at every step.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..engine import Input, Param, RunContext, node
from .images import check_image_file, pixels_to_pil
from .types import (CONDITION, DEPTH_ESTIMATOR, IMAGE, IMAGE_PROCESSOR, LATENTS, Condition, ConditionFacts, Images,
                    Latents)

if TYPE_CHECKING:
    import torch

HINT = ("'{node}' adds a depth channel, which only a depth UNet takes (5 input channels): load a depth model "
        "(model=tiny_depth, model=sd2_depth)")


def read_depth_map(path: str) -> torch.Tensor:
    """A depth image file as [1, H, W] float32 (larger = nearer, like DPT); 16-bit and float files keep their range."""
    import torch

    with Image.open(Path(path).expanduser()) as img:
        img.load()
        if img.mode in ("I", "I;16", "I;16B", "F"):
            array = np.array(img).astype(np.float32)
        else:
            array = np.array(img.convert("L")).astype(np.float32) / 255.0
    return torch.from_numpy(array)[None]


def check_depth_condition(params, inputs_meta, ctx):
    if params["depth_map"] is not None:
        check_image_file(ctx, "depth_map", params["depth_map"], "depth map")
    elif ctx.source_of("depth_estimator") is None or ctx.source_of("feature_extractor") is None:
        ctx.problem("depth_estimator", "no depth to condition on: wire depth_estimator and feature_extractor from a "
                    "depth model's load_model, or give a depth map file (depth_map)")
    return {"condition": ConditionFacts(channels=1, hint=HINT.format(node=ctx.node_id))}


@node(
    "depth_condition",
    "Make a depth UNet's extra channel: depth estimated by the model's DPT, or a given depth map, sized to the latents.",
    inputs={
        "image": Input(IMAGE, "the images whose depth is estimated"),
        "latents": Input(LATENTS, "the latents the depth joins (sets its size and batch)"),
        "depth_estimator": Input(DEPTH_ESTIMATOR, "the model's DPT (unused when depth_map is given)", optional=True),
        "feature_extractor": Input(IMAGE_PROCESSOR, "the DPT's image processor", optional=True),
    },
    outputs={"condition": CONDITION},
    params={
        "depth_map": Param(str, None, nullable=True,
                           doc="depth image file used instead of estimating (white = near; 8-bit, 16-bit or float)",
                           role="input_file"),
    },
    check=check_depth_condition,
)
def depth_condition(ctx: RunContext, image: Images, latents: Latents, depth_estimator, feature_extractor, depth_map):
    import torch

    if depth_map is not None:
        depth = read_depth_map(depth_map).to(ctx.device)
    else:
        if depth_estimator is None or feature_extractor is None:
            raise ValueError("this model has no depth estimator (DPT): load a depth model (model=tiny_depth, "
                             "model=sd2_depth) or give a depth map file (depth_map=path/to/depth.png)")
        pixel_values = feature_extractor(images=pixels_to_pil(image.pixels), return_tensors="pt").pixel_values
        pixel_values = pixel_values.to(device=ctx.device, dtype=depth_estimator.dtype)
        # DPT-Hybrid's batch norms are unstable in fp16: diffusers runs it under autocast off the CPU.
        autocast = (torch.autocast(torch.device(ctx.device).type, dtype=depth_estimator.dtype)
                    if torch.device(ctx.device).type == "cuda" else contextlib.nullcontext())
        with torch.no_grad(), autocast:
            depth = depth_estimator(pixel_values).predicted_depth
    batch, _, height, width = latents.samples.shape
    depth = torch.nn.functional.interpolate(depth.unsqueeze(1).float(), size=(height, width), mode="bicubic",
                                            align_corners=False)
    low = torch.amin(depth, dim=[1, 2, 3], keepdim=True)
    high = torch.amax(depth, dim=[1, 2, 3], keepdim=True)
    depth = 2.0 * (depth - low) / (high - low) - 1.0
    if batch % depth.shape[0]:
        raise ValueError(f"{depth.shape[0]} depth maps cannot be spread over {batch} latents")
    # The same order as encode_image spreads seeds over images: each image's copies side by side.
    depth = depth.repeat_interleave(batch // depth.shape[0], dim=0)
    return {"condition": Condition(concat=depth.to(latents.samples.dtype))}
