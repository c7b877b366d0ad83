"""save_image: write PNGs that carry what is needed to make them again: whole, and never over another file."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..a1111 import parameters as a1111_parameters
from ..a1111 import record_weight_hashes
from ..engine import Input, Param, RunContext, node
from ..engine.execute import value_for_image
from ..manifest import add_image
from .images import pixels_to_pil
from .types import IMAGE, Images


def png_bytes(image, text_chunks: dict[str, str]) -> bytes:
    info = PngInfo()
    for key, value in text_chunks.items():
        info.add_itxt(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def free_names(name: str):
    """NAME.png, then NAME_1.png, NAME_2.png, ...: the names a new file may take."""
    stem, suffix = os.path.splitext(name)
    yield name
    for number in itertools.count(1):
        yield f"{stem}_{number}{suffix}"


def write_new_file(folder: Path, name: str, render: Callable[[str], bytes]) -> tuple[Path, bytes]:
    """Write ``render(final_name)`` as a new file in ``folder``; never replace one. Returns its path and bytes.

    Taken names get a number (NAME_1.png, ...): a rerun into the same folder keeps the earlier images. The
    bytes go to a temporary file first, then are hard-linked to the final name, which fails (rather than
    replaces) if the name exists, so a reader never sees half a file and two writers never clash. The file
    gets the user's usual permissions (0666 less the umask), not mkstemp's 0600.
    """
    mask = os.umask(0)
    os.umask(mask)
    for candidate in free_names(name):
        final = folder / candidate
        if final.exists():
            continue
        data = render(candidate)  # the metadata names the file it is written to
        fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}-", suffix=".png.tmp", dir=folder)
        try:
            os.fchmod(fd, 0o666 & ~mask)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            try:
                os.link(tmp, final)
            except FileExistsError:
                continue  # another writer took the name meanwhile: the next one
            except OSError:  # a filesystem without hard links: create the name exclusively, then write
                try:
                    out = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                except FileExistsError:
                    continue
                with os.fdopen(out, "wb") as handle:
                    handle.write(data)
            return final, data
        finally:
            Path(tmp).unlink(missing_ok=True)


def image_chunks(ctx: RunContext, image: Images, index: int, file_name: str) -> dict[str, str]:
    """The PNG text chunks of image ``index``: the run record, this image's own values, the workflow as it ran,
    and the same as A1111's ``parameters`` text."""
    record_weight_hashes(ctx.record)  # each model's weight hashes, which reproduce checks (hashed once per machine)
    metadata = {k: v for k, v in ctx.record.items() if k not in ("saved", "timings_s")}
    seed = image.seeds[index] if index < len(image.seeds) else None
    return {
        "sdflow": json.dumps({**metadata, "image": {
            "node": ctx.node_id, "index": index, "seed": seed, "file": file_name,
            "flagged": bool(image.flagged[index]) if image.flagged else None,
            # this image's own value of every per-image parameter ("node.param"), e.g. its prompt
            "values": {key: value_for_image(value, index) for key, value in ctx.per_image.items()}}}, sort_keys=True),
        "sdflow_workflow": ctx.record.get("workflow_yaml", ""),
        "parameters": a1111_parameters(ctx, image, index),
    }


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
    out_dir = Path(ctx.output_dir or ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = ctx.record.setdefault("saved", [])
    # 1-channel images (depth maps) are written as 16-bit grayscale PNGs; RGB ones as 8-bit RGB.
    pils = gray16_to_pil(image.pixels) if image.pixels.shape[1] == 1 else pixels_to_pil(image.pixels)
    for index, pil in enumerate(pils):
        seed = image.seeds[index] if index < len(image.seeds) else None
        name = f"{prefix}_{index:03d}" + (f"_seed{seed}" if seed is not None else "") + ".png"
        path, data = write_new_file(out_dir, name, lambda file: png_bytes(pil, image_chunks(ctx, image, index, file)))
        saved.append(str(path))
        add_image(path, hashlib.sha256(data).hexdigest(), ctx.node_id)
    return {}
