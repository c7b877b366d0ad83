"""save_image: write PNGs that carry what is needed to make them again, atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..engine import Input, Param, RunContext, node
from ..engine.execute import value_for_image
from .images import pixels_to_pil
from .types import IMAGE, Images


def write_png_atomically(image, path: Path, text_chunks: dict[str, str]) -> None:
    """Write to a temporary file in the same folder, then rename: a reader never sees half a file."""
    info = PngInfo()
    for key, value in text_chunks.items():
        info.add_itxt(key, value)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".png.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def gray16_to_pil(pixels) -> list:
    """1-channel images (e.g. LDM3D depth) as 16-bit grayscale, scaled like diffusers' LDM3D depth PNGs."""
    array = (pixels.detach().float().cpu()[:, 0].numpy() * 65535.0).astype("uint16")
    return [Image.fromarray(a) for a in array]  # uint16 arrays become mode "I;16"


@node(
    "save_image",
    "Save images as PNG in the run folder, with the resolved workflow, models, versions and each image's own seed, "
    "prompt and guidance in text chunks.",
    inputs={"image": Input(IMAGE)},
    params={"prefix": Param(str, "image", doc="file name prefix: PREFIX_INDEX_seedSEED.png")},
)
def save_image(ctx: RunContext, image: Images, prefix: str):
    if not prefix or "/" in prefix or "\\" in prefix or prefix.startswith("."):
        raise ValueError(f"prefix must be a plain file name part, given {prefix!r}")
    out_dir = Path(ctx.output_dir or ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = ctx.record.setdefault("saved", [])
    # 1-channel images (depth maps) are written as 16-bit grayscale PNGs; RGB ones as 8-bit RGB.
    pils = gray16_to_pil(image.pixels) if image.pixels.shape[1] == 1 else pixels_to_pil(image.pixels)
    for index, pil in enumerate(pils):
        seed = image.seeds[index] if index < len(image.seeds) else None
        name = f"{prefix}_{index:03d}" + (f"_seed{seed}" if seed is not None else "") + ".png"
        metadata = {k: v for k, v in ctx.record.items() if k not in ("saved", "timings_s")}
        chunks = {
            "sdflow": json.dumps({**metadata, "image": {
                "node": ctx.node_id, "index": index, "seed": seed,
                "flagged": bool(image.flagged[index]) if image.flagged else None,
                # this image's own value of every per-image parameter ("node.param"), e.g. its prompt
                "values": {key: value_for_image(value, index) for key, value in ctx.per_image.items()}}},
                                 sort_keys=True),
            "sdflow_workflow": ctx.record.get("workflow_yaml", ""),
        }
        write_png_atomically(pil, out_dir / name, chunks)
        saved.append(str(out_dir / name))
    return {}
