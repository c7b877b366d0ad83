"""save_image: PNGs that carry what is needed to make them again, handed to the run's writer (new files only)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..engine import Input, Param, RunContext, node, value_for_image
from .a1111 import parameters as a1111_parameters
from .images import pixels_to_pil
from .types import IMAGE, Images


def png_bytes(image, text_chunks: dict[str, str]) -> bytes:
    info = PngInfo()
    for key, value in text_chunks.items():
        info.add_itxt(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


@dataclass
class PngFile:
    """One image and its metadata, made into PNG bytes once the writer has chosen its file name (the metadata
    names the file it is in). Plain data, so it can travel from a sweep's worker to the driver that writes it."""

    image: Image.Image
    metadata: dict[str, Any]  # the ``sdflow`` JSON, its image's "file" still to fill in
    workflow_yaml: str
    parameters: str

    def __call__(self, file_name: str) -> bytes:
        metadata = {**self.metadata, "image": {**self.metadata["image"], "file": file_name}}
        return png_bytes(self.image, {"sdflow": json.dumps(metadata, sort_keys=True),
                                      "sdflow_workflow": self.workflow_yaml, "parameters": self.parameters})


def png_file(ctx: RunContext, image: Images, index: int, pil: Image.Image) -> PngFile:
    """Image ``index`` as a PngFile: the run record, this image's own values, the workflow as it ran, and the same as
    A1111's ``parameters`` text."""
    metadata = ctx.record.to_json()
    metadata["image"] = {
        "node": ctx.node_id, "index": index, "seed": image.seeds[index] if index < len(image.seeds) else None,
        "flagged": bool(image.flagged[index]) if image.flagged else None,
        # this image's own value of every per-image parameter ("node.param"), e.g. its prompt
        "values": {key: value_for_image(value, index) for key, value in ctx.per_image.items()}}
    return PngFile(pil, metadata, ctx.record.workflow_yaml, a1111_parameters(ctx, image, index))


def gray16_to_pil(pixels) -> list:
    """1-channel images (e.g. LDM3D depth) as 16-bit grayscale, scaled like diffusers' LDM3D depth PNGs."""
    array = (pixels.detach().float().cpu()[:, 0].numpy() * 65535.0).astype("uint16")
    return [Image.fromarray(a) for a in array]  # uint16 arrays become mode "I;16"


def prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot start a file name in the run folder (a path, a hidden file), or None."""
    if not prefix or "/" in prefix or "\\" in prefix or prefix.startswith(".") or "\0" in prefix:
        return f"expected a plain file name part (no '/', '\\' or leading '.'), given {prefix!r}"
    return None


def check_save_image(params, inputs_meta, ctx):
    problem = prefix_problem(params["prefix"])
    if problem:
        ctx.problem("prefix", problem)
    return {}


@node(
    "save_image",
    "Save images as PNG in the run folder, with the resolved workflow, models, versions and each image's own seed, "
    "prompt and guidance in text chunks.",
    inputs={"image": Input(IMAGE)},
    params={"prefix": Param(str, "image", doc="file name prefix: PREFIX_INDEX_seedSEED.png")},
    check=check_save_image,
)
def save_image(ctx: RunContext, image: Images, prefix: str):
    if prefix_problem(prefix):
        raise ValueError(prefix_problem(prefix))
    if ctx.files is None:
        raise RuntimeError("this run keeps no files (it was given no output folder)")
    # 1-channel images (depth maps) are written as 16-bit grayscale PNGs; RGB ones as 8-bit RGB.
    pils = gray16_to_pil(image.pixels) if image.pixels.shape[1] == 1 else pixels_to_pil(image.pixels)
    for index, pil in enumerate(pils):
        seed = image.seeds[index] if index < len(image.seeds) else None
        name = f"{prefix}_{index:03d}" + (f"_seed{seed}" if seed is not None else "") + ".png"
        ctx.files.write(name, png_file(ctx, image, index, pil), ctx.node_id)
    return {}
