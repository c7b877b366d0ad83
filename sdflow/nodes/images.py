"""load_image, encode_image, decode: moving between pixels and latents."""

from __future__ import annotations

import contextlib
import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ..engine import Input, Param, RunContext, node
from .memory import free_memory, is_out_of_memory, record_fallback
from .offload import editable_copy, offloaded_like
from .types import (SEEDS, IMAGE, LATENTS, VAE, ImageFacts, Images, LatentFacts, Latents, all_finite, check_seed_batch,
                    generators_for, seeds_list)
from .records import Seeds
from .vae_facts import check_image_fits_vae

if TYPE_CHECKING:
    import torch


def pil_to_pixels(image: Image.Image) -> torch.Tensor:
    """[1, 3, H, W] float32 in [0, 1], exactly as diffusers' image processor reads a PIL image."""
    import torch

    array = np.array(image.convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def pixels_to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    array = (pixels.detach().float().cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    return [Image.fromarray(a) for a in array]


GRAY_WIDE = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # one channel of more than 8 bits
TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that turn the image a quarter: width and height swap


def open_image(path: str) -> Image.Image:
    """An image file as the user sees it: upright by its EXIF orientation, as 8-bit RGB.

    Wide grayscale (16-bit PNGs: "I;16", "I") is scaled to 8 bits, not clipped (clipped, it reads near-white);
    transparency (RGBA, LA, P or L with a transparent colour) is composited over white; CMYK and the other
    modes go through PIL's conversion.
    """
    with Image.open(path) as img:
        img.load()
        return to_rgb(ImageOps.exif_transpose(img), sixteen_bit(img))


def sixteen_bit(image: Image.Image) -> bool:
    """Whether an opened file's one wide channel holds 16-bit values (PIL opens 16-bit PNGs as "I;16" or "I")."""
    return image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG")


def to_rgb(image: Image.Image, sixteen_bit: bool = False) -> Image.Image:
    """``image`` as 8-bit RGB (see open_image); ``sixteen_bit``: a wide grayscale image's range is 0-65535."""
    if image.mode in GRAY_WIDE:
        array = np.asarray(image, dtype=np.float64)
        top = array.max(initial=0.0)
        full = 65535.0 if sixteen_bit or top > 255 else 1.0 if image.mode == "F" and top <= 1.0 else 255.0
        return Image.fromarray(np.clip(np.round(array * 255.0 / full), 0, 255).astype(np.uint8)).convert("RGB")
    if "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


DEFAULT_MAX_PIXELS = 4096 * 4096  # runtime.max_pixels: SDXL's 1024x1024 upscaled x4, with room to spare


def max_pixels(runtime) -> int | None:
    """The most pixels an input image or an output size may have (runtime.max_pixels; null: no limit)."""
    return runtime.get("max_pixels", DEFAULT_MAX_PIXELS)


def over_max_pixels(ctx, field_name: str, width: int, height: int, what: str) -> bool:
    """Report ``what`` of width x height when it is over runtime.max_pixels, saying how to raise it."""
    cap = max_pixels(ctx.runtime)
    if cap is None or width * height <= cap:
        return False
    ctx.problem(field_name, f"{what} is {width}x{height} ({width * height:,} pixels), over the limit of {cap:,} pixels "
                f"(runtime.max_pixels, {int(cap ** 0.5)}x{int(cap ** 0.5)}); make it smaller, or raise the limit: "
                f"runtime.max_pixels={width * height}")
    return True


def check_image_file(ctx, field_name: str, given: str, what: str = "image") -> tuple[int, int] | None:
    """The upright (width, height) of an input image file, or None with the problem reported. Before anything
    loads: the file exists, is no larger than runtime.max_pixels (read from its header, before any pixel is
    decoded: a 20000x20000 PNG bomb costs nothing), and decodes whole (a truncated JPEG is found here, not after
    the run folder exists)."""
    path = Path(given).expanduser()
    if not path.exists():
        ctx.problem(field_name, f"{what} file '{given}' does not exist")
        return None
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:  # over PIL's own bound, which it holds while reading the header
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)):,} pixels" if found else "more pixels than PIL opens"
        ctx.problem(field_name, f"'{given}' has {pixels}, over the limit of {max_pixels(ctx.runtime) or 0:,} pixels "
                    f"(runtime.max_pixels, and PIL's own bound against decompression bombs): give a smaller image")
        return None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        ctx.problem(field_name, f"'{given}' is not a readable {what} ({exc})")
        return None
    if over_max_pixels(ctx, field_name, width, height, f"'{given}'"):
        return None
    stat = path.stat()
    transposed, fault = _decoded_whole(str(path), stat.st_size, stat.st_mtime_ns)
    if fault is not None:
        ctx.problem(field_name, f"'{given}' is not a readable {what} ({fault})")
        return None
    return (height, width) if transposed else (width, height)


@functools.lru_cache(maxsize=256)
def _decoded_whole(path: str, size: int, mtime_ns: int) -> tuple[bool, str | None]:
    """(whether its EXIF turns it a quarter, why it does not decode whole or None), once per file version: a
    sweep's jobs validate the same input image. JPEGs decode at 1/8 scale for it (libjpeg still reads every byte)."""
    try:
        with Image.open(path) as img:
            img.verify()  # (PNG: every chunk's checksum)
        with Image.open(path) as img:
            img.draft("RGB", (max(img.width // 8, 1), max(img.height // 8, 1)))
            img.load()
            return img.getexif().get(ExifTags.Base.Orientation) in TRANSPOSED, None  # (a PNG's EXIF may follow its pixels)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return False, str(exc)


def check_load_image(params, inputs_meta, ctx):
    size = check_image_file(ctx, "path", params["path"])
    if size is None:
        return {}
    width, height = params["width"] or size[0], params["height"] or size[1]
    if (params["width"] or params["height"]) and over_max_pixels(ctx, "width", width, height, "the resized image"):
        return {}
    return {"image": ImageFacts(width=width, height=height, count=1)}


@node(
    "load_image",
    "Read an image file (PNG, JPEG, ...) as RGB, optionally resized.",
    outputs={"image": IMAGE},
    params={
        "path": Param(str, doc="image file", role="input_file"),
        "width": Param(int, None, nullable=True, min=8, max=8192, doc="resize to this width (default: keep)"),
        "height": Param(int, None, nullable=True, min=8, max=8192, doc="resize to this height (default: keep)"),
    },
    check=check_load_image,
)
def load_image(ctx: RunContext, path: str, width, height):
    image = open_image(str(Path(path).expanduser()))
    if width or height:
        image = image.resize((width or image.width, height or image.height), Image.LANCZOS)
    return {"image": Images(pil_to_pixels(image).to(ctx.device), seeds=[])}


def check_encode_image(params, inputs_meta, ctx):
    vae, image = inputs_meta["vae"], inputs_meta["image"]
    check_image_fits_vae(ctx, image, vae)
    check_seed_batch(params, ctx)
    images = (image.count if image else None) or 1
    count = len(seeds_list(params["seed"], max(params["batch_size"], images)))
    return {"latents": LatentFacts(kind="image", channels=vae.latent_channels if vae else None, count=count,
                                   size=(image.width, image.height) if image and image.width and image.height else None,
                                   scaling_factor=vae.scaling_factor if vae else None)}


@node(
    "encode_image",
    "Encode images into VAE latents (sampled from the latent distribution with each image's own seed).",
    inputs={"vae": Input(VAE), "image": Input(IMAGE)},
    outputs={"latents": LATENTS},
    params={
        "seed": Param(SEEDS, doc="one seed per output image; its generator also draws the img2img noise",
                      per_image=True),
        "batch_size": Param(int, 1, min=1, max=256, count_of="seed", doc="images when seed is a single int"),
    },
    check=check_encode_image,
)
def encode_image(ctx: RunContext, vae, image: Images, seed, batch_size: int):
    import torch
    from diffusers.image_processor import VaeImageProcessor

    seeds = seeds_list(seed, max(batch_size, image.pixels.shape[0]))
    pixels = image.pixels
    if pixels.shape[0] != len(seeds):
        if len(seeds) % pixels.shape[0]:
            raise ValueError(f"{len(seeds)} seeds cannot be spread over {pixels.shape[0]} images")
        pixels = pixels.repeat_interleave(len(seeds) // pixels.shape[0], dim=0)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    processor = VaeImageProcessor(vae_scale_factor=factor)
    normalized = processor.preprocess(pixels).to(device=ctx.device, dtype=vae.dtype)
    generators = generators_for(seeds, "cpu")
    with torch.no_grad(), vae_modes(ctx, vae):
        samples = torch.cat([
            vae.encode(normalized[i : i + 1]).latent_dist.sample(generators[i]) for i in range(len(seeds))
        ])
    samples = samples * vae.config.scaling_factor
    ctx.record.note(ctx.node_id, Seeds(seeds))
    return {"latents": Latents(samples, seeds, generators, "image", vae.config.scaling_factor)}


def check_decode(params, inputs_meta, ctx):
    vae, latents = inputs_meta["vae"], inputs_meta["latents"]
    if vae and latents:
        if latents.channels and vae.latent_channels and latents.channels != vae.latent_channels:
            ctx.problem("vae", f"latents from '{ctx.source_of('latents')}' have {latents.channels} channels but the "
                        f"VAE from '{ctx.source_of('vae')}' decodes {vae.latent_channels}")
        elif latents.scaling_factor and vae.scaling_factor and latents.scaling_factor != vae.scaling_factor:
            ctx.problem("vae", f"latents from '{ctx.source_of('latents')}' assume VAE scaling {latents.scaling_factor} "
                        f"but the VAE from '{ctx.source_of('vae')}' uses {vae.scaling_factor}: wire the VAE that "
                        "made (or will make) these latents")
    return {"image": ImageFacts(count=latents.count if latents else None)}


@node(
    "decode",
    "Decode latents into RGB images with the VAE (undoing its scaling factor).",
    inputs={"vae": Input(VAE), "latents": Input(LATENTS)},
    outputs={"image": IMAGE},
    check=check_decode,
)
def decode(ctx: RunContext, vae, latents: Latents):
    import torch

    with torch.no_grad(), vae_modes(ctx, vae):
        decoded = decode_in_halves(ctx, vae, latents.samples.to(vae.dtype) / vae.config.scaling_factor)
        if vae.dtype != torch.float32 and not all_finite(decoded) and all_finite(latents.samples):
            decoded = decode_in_float32(ctx, vae, latents.samples)
    pixels = (decoded / 2 + 0.5).clamp(0, 1)
    return {"image": Images(pixels, list(latents.seeds))}


@contextlib.contextmanager
def vae_modes(ctx: RunContext, vae):
    """The cached VAE with runtime.vae_slicing and vae_tiling set for this node's encode or decode, as diffusers'
    enable_vae_slicing / enable_vae_tiling set them, and put back after: the VAE is shared with other runs."""
    if not hasattr(vae, "use_tiling"):  # (a VAE class without the modes)
        yield vae
        return
    kept = vae.use_slicing, vae.use_tiling
    vae.use_slicing, vae.use_tiling = ctx.vae_slicing, ctx.vae_tiling
    try:
        yield vae
    finally:
        vae.use_slicing, vae.use_tiling = kept


def decode_in_float32(ctx: RunContext, vae, samples: torch.Tensor) -> torch.Tensor:
    """A half-precision VAE overflowed (NaN/Inf, as SD's and SDXL's VAEs can in float16): decode again in float32,
    as diffusers' upcast_vae does, with a copy (the cached VAE stays as loaded); recorded as a fallback."""

    record_fallback(ctx, "float32_retry", f"the {str(vae.dtype).replace('torch.', '')} VAE decode gave NaN/Inf values; "
                    "decoded again in float32")
    upcast = offloaded_like(editable_copy(vae).float(), vae)
    decoded = decode_in_halves(ctx, upcast, samples.float() / vae.config.scaling_factor)
    return decoded.clamp(-1, 1).to(vae.dtype)  # (the pixels' range [0, 1] is exact enough in half precision)


def decode_in_halves(ctx: RunContext, vae, z: torch.Tensor) -> torch.Tensor:
    """``vae.decode(z)``; out of GPU memory, the batch as two halves (recursively), and one image in tiles.

    Decoding has no randomness: halves give the very pixels of the whole batch. Tiles blend at their seams,
    as diffusers' tiled decode does, so a tiled image may differ slightly; each fallback is recorded.
    """
    import torch

    batch = z.shape[0]
    try:
        return vae.decode(z, return_dict=False)[0]
    except Exception as exc:  # noqa: BLE001 (every form of out of memory; anything else goes on up)
        if not is_out_of_memory(exc) or (batch == 1 and not hasattr(vae, "tiled_decode")):
            raise
    # (retried out of the except block, so the failed try's tensors are already released)
    free_memory()
    if batch == 1:
        return decode_in_tiles(ctx, vae, z)
    half = batch // 2
    record_fallback(ctx, "batch_split", f"out of memory decoding {batch} images at once; decoded them as {half} + {batch - half}")
    return torch.cat([decode_in_halves(ctx, vae, z[:half]), decode_in_halves(ctx, vae, z[half:])])


def decode_in_tiles(ctx: RunContext, vae, z: torch.Tensor) -> torch.Tensor:
    """One image that does not fit: diffusers' tiled VAE decode, tiles of half its larger side, then smaller."""
    import torch

    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    tile = max(z.shape[-2:])
    kept = vae.tile_latent_min_size, vae.tile_sample_min_size  # the cached VAE is shared: put its sizes back
    try:
        while (tile := (tile + 1) // 2) >= 4:  # (smaller tiles would leave no overlap to blend)
            vae.tile_latent_min_size, vae.tile_sample_min_size = tile, tile * factor
            try:
                decoded = vae.tiled_decode(z, return_dict=False)[0]
            except Exception as exc:  # noqa: BLE001
                if not is_out_of_memory(exc):
                    raise
                decoded = None
            if decoded is not None:
                record_fallback(ctx, "tiled_decode", f"out of memory decoding one {z.shape[-1] * factor}x{z.shape[-2] * factor} "
                                f"image; decoded it in tiles of {tile * factor} px (diffusers' tiled VAE decode)")
                return decoded
            free_memory()
    finally:
        vae.tile_latent_min_size, vae.tile_sample_min_size = kept
    raise torch.OutOfMemoryError(f"{ctx.node_id}: out of memory decoding one image, even in tiles")
