"""load_image, encode_image, decode: moving between pixels and latents."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..engine import Input, Param, RunContext, node
from .types import IMAGE, LATENTS, VAE, Images, Latents, check_seed_batch, generators_for, seeds_list
from .vae_facts import check_image_fits_vae, latent_channels

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


def open_image(path: str) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


def check_load_image(params, inputs_meta, ctx):
    path = Path(params["path"]).expanduser()
    if not path.exists():
        ctx.problem("path", f"image file '{params['path']}' does not exist")
        return {}
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            size = img.size
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        ctx.problem("path", f"'{params['path']}' is not a readable image ({exc})")
        return {}
    width, height = params.get("width") or size[0], params.get("height") or size[1]
    return {"image": {"width": width, "height": height, "count": 1}}


@node(
    "load_image",
    "Read an image file (PNG, JPEG, ...) as RGB, optionally resized.",
    outputs={"image": IMAGE},
    params={
        "path": Param(str, doc="image file"),
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
    vae, image = inputs_meta.get("vae") or {}, inputs_meta.get("image") or {}
    check_image_fits_vae(ctx, image, vae)
    check_seed_batch(params, ctx)
    images = image.get("count") or 1
    count = len(seeds_list(params["seed"], max(params["batch_size"], images)))
    return {"latents": {"kind": "image", "channels": latent_channels(vae) if vae else None, "count": count,
                        "scaling_factor": vae.get("scaling_factor") if vae else None, "from": ctx.source_of("vae")}}


@node(
    "encode_image",
    "Encode images into VAE latents (sampled from the latent distribution with each image's own seed).",
    inputs={"vae": Input(VAE), "image": Input(IMAGE)},
    outputs={"latents": LATENTS},
    params={
        "seed": Param("seeds", doc="one seed per output image; its generator also draws the img2img noise",
                      per_image=True),
        "batch_size": Param(int, 1, min=1, max=256, doc="images when seed is a single int"),
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
    with torch.no_grad():
        samples = torch.cat([
            vae.encode(normalized[i : i + 1]).latent_dist.sample(generators[i]) for i in range(len(seeds))
        ])
    samples = samples * vae.config.scaling_factor
    ctx.record.setdefault("seeds", {})[ctx.node_id] = seeds
    return {"latents": Latents(samples, seeds, generators, "image", vae.config.scaling_factor)}


def check_decode(params, inputs_meta, ctx):
    vae, latents = inputs_meta.get("vae") or {}, inputs_meta.get("latents") or {}
    if vae and latents:
        if latents.get("channels") and latent_channels(vae) and latents["channels"] != latent_channels(vae):
            ctx.problem("vae", f"latents from '{ctx.source_of('latents')}' have {latents['channels']} channels but the "
                        f"VAE from '{ctx.source_of('vae')}' decodes {latent_channels(vae)}")
        elif latents.get("scaling_factor") and vae.get("scaling_factor") and latents["scaling_factor"] != vae["scaling_factor"]:
            ctx.problem("vae", f"latents from '{ctx.source_of('latents')}' assume VAE scaling {latents['scaling_factor']} "
                        f"but the VAE from '{ctx.source_of('vae')}' uses {vae['scaling_factor']}: wire the VAE that "
                        "made (or will make) these latents")
    return {"image": {"count": latents.get("count")}}


@node(
    "decode",
    "Decode latents into RGB images with the VAE (undoing its scaling factor).",
    inputs={"vae": Input(VAE), "latents": Input(LATENTS)},
    outputs={"image": IMAGE},
    check=check_decode,
)
def decode(ctx: RunContext, vae, latents: Latents):
    import torch

    with torch.no_grad():
        decoded = vae.decode(latents.samples.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    pixels = (decoded / 2 + 0.5).clamp(0, 1)
    return {"image": Images(pixels, list(latents.seeds))}
