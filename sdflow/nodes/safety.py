"""safety_check: run the model's safety checker; a flagged image is always reported, never silently blacked out."""

from __future__ import annotations

import logging

import numpy as np

from ..engine import Input, Param, RunContext, node
from .images import pixels_to_pil
from .offload import compute_device
from .types import IMAGE, SAFETY_CHECKER, Images, SafetyChecker
from .records import SafetyReport, SafetySkipped

log = logging.getLogger("sdflow.safety")


def check_safety_check(params, inputs_meta, ctx):
    return {"image": inputs_meta["image"]}  # the same images, some perhaps blacked out


@node(
    "safety_check",
    "Check images with the model's safety checker; flagged images are reported and blacked out or kept.",
    inputs={"image": Input(IMAGE), "safety_checker": Input(SAFETY_CHECKER, "none for models without one")},
    outputs={"image": IMAGE},
    params={"flagged": Param(str, "black", choices=("black", "keep"), doc="what to do with a flagged image")},
    check=check_safety_check,
)
def safety_check(ctx: RunContext, image: Images, safety_checker: SafetyChecker | None, flagged: str):
    import torch

    if safety_checker is None:
        log.info("%s: the model has no safety checker; safety check skipped", ctx.node_id)
        ctx.record.note(ctx.node_id, SafetySkipped("the model has no safety checker"))
        return {"image": image}
    array = image.pixels.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    clip_input = safety_checker.feature_extractor(pixels_to_pil(image.pixels), return_tensors="pt").pixel_values
    model = safety_checker.model
    with torch.no_grad():
        _, has_nsfw = model(images=np.copy(array), clip_input=clip_input.to(device=compute_device(model), dtype=model.dtype))
    flags = [bool(f) for f in has_nsfw]
    pixels = image.pixels.clone()
    for i, is_flagged in enumerate(flags):
        if is_flagged:
            seed = image.seeds[i] if i < len(image.seeds) else "?"
            log.warning("%s: image %d (seed %s) was flagged by the safety checker%s", ctx.node_id, i, seed,
                        "; replaced by black" if flagged == "black" else "; kept as asked")
            if flagged == "black":
                pixels[i] = 0
    ctx.record.note(ctx.node_id, SafetyReport(flags, flagged))
    return {"image": Images(pixels, list(image.seeds), flags)}
