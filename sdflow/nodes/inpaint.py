"""inpaint_condition: prepare an inpainting run — starting latents plus the mask conditioning for denoise.

Mirrors StableDiffusionInpaintPipeline. The mask is binarized (>= 0.5 repaints) and the masked image is the
image with the repainted area blacked out. Two modes, as the pipeline picks by the UNet's input channels:
``concat`` (9-channel inpainting UNets: mask and masked-image latents join the latents at every step) and
``blend`` (plain 4-channel UNets: after every step the area outside the mask is reset to the image, noised
to the next timestep). Each image's generator draws in the pipeline's order: image latents (blend mode, or
strength < 1), then the starting noise, then the masked-image latents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..engine import Input, Param, RunContext, node
from .types import (SEEDS, CONDITION, IMAGE, LATENTS, MASK, VAE, Condition, ConditionFacts, ImageFacts, Images, LatentFacts,
                    Latents, Mask, MaskBlend, check_seed_batch, generators_for, seeds_list)
from .images import vae_modes
from .records import Seeds
from .vae_facts import check_image_fits_vae

if TYPE_CHECKING:
    import torch

HINTS = {
    "concat": "'{node}' prepares a 9-channel inpainting UNet's inputs (mode concat): load an inpainting model "
              "(model=tiny_inpaint, model=sd2_inpaint) or, for a plain 4-channel UNet, use mode blend (inpaint_mode=blend)",
    "blend": "'{node}' prepares legacy inpainting for a plain 4-channel UNet (mode blend): for a 9-channel inpainting "
             "UNet use mode concat (inpaint_mode=concat)",
}


def check_inpaint_condition(params, inputs_meta, ctx):
    vae, image, mask = inputs_meta["vae"], inputs_meta["image"] or ImageFacts(), inputs_meta["mask"] or ImageFacts()
    image_size, mask_size = (image.width, image.height), (mask.width, mask.height)
    if None not in image_size + mask_size and image_size != mask_size:
        ctx.problem("mask", f"the mask from '{ctx.source_of('mask')}' is {mask.width}x{mask.height} but the image "
                    f"from '{ctx.source_of('image')}' is {image.width}x{image.height}; give them the same size "
                    "(load_image/load_mask width and height)")
    check_image_fits_vae(ctx, image, vae)
    check_seed_batch(params, ctx)
    channels = vae.latent_channels if vae else None
    strength = params["strength"]
    count = len(seeds_list(params["seed"], max(params["batch_size"], image.count or 1)))
    return {
        "latents": LatentFacts(kind="noise" if strength == 1.0 else "image", channels=channels, strength=strength,
                               count=count, scaling_factor=vae.scaling_factor if vae else None,
                               size=image_size if None not in image_size else None),
        "condition": ConditionFacts(channels=1 + channels if params["mode"] == "concat" and channels else 0,
                                    hint=HINTS[params["mode"]].format(node=ctx.node_id)),
    }


def sample_latents(ctx: RunContext, vae, pixels: torch.Tensor, generators) -> torch.Tensor:
    """VAE latents of each image sampled with its own generator, scaled (the pipeline's _encode_vae_image), with
    the runtime's VAE modes (tiling)."""
    import torch

    with torch.no_grad(), vae_modes(ctx, vae):
        samples = torch.cat([vae.encode(pixels[i : i + 1]).latent_dist.sample(g) for i, g in enumerate(generators)])
    return samples * vae.config.scaling_factor


@node(
    "inpaint_condition",
    "Prepare inpainting: starting latents and the mask conditioning (9-channel concat or 4-channel blend) for denoise.",
    inputs={"vae": Input(VAE), "image": Input(IMAGE, "the images to inpaint"),
            "mask": Input(MASK, "white = repaint; the same size as the image")},
    outputs={"latents": LATENTS, "condition": CONDITION},
    params={
        "mode": Param(str, "concat", choices=("concat", "blend"),
                      doc="concat: 9-channel inpainting UNet; blend: plain 4-channel UNet (legacy inpainting)"),
        "strength": Param(float, 1.0, min=0.0, max=1.0,
                          doc="1.0 starts from pure noise; below, from the noised image (give denoise the same)"),
        "seed": Param(SEEDS, doc="one seed per output image", per_image=True),
        "batch_size": Param(int, 1, min=1, max=256, count_of="seed", doc="images when seed is a single int"),
    },
    check=check_inpaint_condition,
)
def inpaint_condition(ctx: RunContext, vae, image: Images, mask: Mask, mode: str, strength: float, seed,
                      batch_size: int):
    import torch
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.utils.torch_utils import randn_tensor

    seeds = seeds_list(seed, max(batch_size, image.pixels.shape[0]))
    pixels, masks = image.pixels, mask.pixels
    if pixels.shape[-2:] != masks.shape[-2:]:
        raise ValueError(f"mask is {tuple(masks.shape[-2:])} (h, w) but the image is {tuple(pixels.shape[-2:])}")
    if len(seeds) % pixels.shape[0] or len(seeds) % masks.shape[0]:
        raise ValueError(f"{len(seeds)} seeds cannot be spread over {pixels.shape[0]} images and {masks.shape[0]} masks")
    pixels = pixels.repeat_interleave(len(seeds) // pixels.shape[0], dim=0)
    masks = masks.repeat_interleave(len(seeds) // masks.shape[0], dim=0)

    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    dtype = vae.dtype
    init = VaeImageProcessor(vae_scale_factor=factor).preprocess(pixels).to(device=ctx.device, dtype=dtype)
    binary = (masks >= 0.5).to(device=ctx.device, dtype=dtype)  # the pipeline's mask processor binarizes
    masked_image = init * (binary < 0.5)
    height, width = init.shape[-2] // factor, init.shape[-1] // factor
    latent_mask = torch.nn.functional.interpolate(binary, size=(height, width))

    generators = generators_for(seeds, "cpu")
    image_latents = sample_latents(ctx, vae, init, generators) if mode == "blend" or strength < 1.0 else None
    shape = (len(seeds), vae.config.latent_channels, height, width)
    noise = randn_tensor(shape, generator=generators, device=ctx.device, dtype=dtype)
    if mode == "concat":
        condition = Condition(concat=torch.cat([latent_mask, sample_latents(ctx, vae, masked_image, generators)], dim=1))
    else:
        # The pipeline encodes the masked image here too and ignores it for 4-channel UNets; draw what that
        # encode would draw, so schedulers that take the generators get the same stream.
        for generator in generators:
            randn_tensor((1, *shape[1:]), generator=generator, dtype=dtype)
        condition = Condition(blend=MaskBlend(latent_mask, image_latents, noise))

    ctx.record.note(ctx.node_id, Seeds(seeds))
    if strength == 1.0:
        latents = Latents(noise, seeds, generators, "noise", vae.config.scaling_factor)
    else:
        latents = Latents(image_latents, seeds, generators, "image", vae.config.scaling_factor, noise=noise)
    return {"latents": latents, "condition": condition}
