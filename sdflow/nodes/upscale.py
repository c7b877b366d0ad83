"""upscale_condition: prepare the x4 upscaler's inputs — the noised low-res image and the starting latents.

Mirrors StableDiffusionUpscalePipeline: the low-res image is noised to ``noise_level`` by the model's
low_res_scheduler and concatenated to the latents at every step, and the noise level goes to the UNet's
class embedding. Both random draws come from each image's generator, image noise first, as diffusers does.
"""

from __future__ import annotations

from ..engine import Input, Param, RunContext, node
from .types import (SEEDS, CONDITION, IMAGE, LATENTS, SCHEDULER, VAE, Condition, ConditionFacts, Images, LatentFacts, Latents,
                    generators_for, seeds_list)
from .records import Seeds


def check_upscale_condition(params, inputs_meta, ctx):
    scheduler, vae, image = inputs_meta["low_res_scheduler"], inputs_meta["vae"], inputs_meta["image"]
    max_level = scheduler.max_noise_level if scheduler else None
    if max_level is not None and params["noise_level"] > max_level:
        ctx.problem("noise_level", f"this upscaler accepts noise levels up to {max_level}, given {params['noise_level']}")
    image_channels = 3
    count = len(params["seed"]) if isinstance(params["seed"], list) else image.count if image else None
    return {
        "condition": ConditionFacts(channels=image_channels),
        "latents": LatentFacts(kind="noise", channels=vae.latent_channels if vae else None, count=count,
                               scaling_factor=vae.scaling_factor if vae else None),
    }


@node(
    "upscale_condition",
    "Prepare an x4 upscale: noise the low-res image to noise_level (the UNet's extra channels) and draw starting latents.",
    inputs={"image": Input(IMAGE, "the low-resolution images"), "low_res_scheduler": Input(SCHEDULER),
            "vae": Input(VAE, "the upscaler's VAE (its latents are the low-res image's size)")},
    outputs={"condition": CONDITION, "latents": LATENTS},
    params={
        "noise_level": Param(int, 20, min=0, max=1000, doc="how much noise to add to the low-res image"),
        "seed": Param(SEEDS, doc="one seed per image", per_image=True),
    },
    check=check_upscale_condition,
)
def upscale_condition(ctx: RunContext, image: Images, low_res_scheduler, vae, noise_level: int, seed):
    import torch
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.utils.torch_utils import randn_tensor

    seeds = seeds_list(seed, image.pixels.shape[0])
    pixels = image.pixels
    if pixels.shape[0] != len(seeds):
        pixels = pixels.repeat_interleave(len(seeds) // pixels.shape[0], dim=0)
    low_res = VaeImageProcessor(resample="bicubic").preprocess(pixels).to(device=ctx.device, dtype=vae.dtype)
    generators = generators_for(seeds, "cpu")
    levels = torch.tensor([noise_level] * len(seeds), dtype=torch.long, device=ctx.device)
    noise = randn_tensor(low_res.shape, generator=generators, device=ctx.device, dtype=low_res.dtype)
    noised = low_res_scheduler.add_noise(low_res, noise, levels[:1])
    shape = (len(seeds), vae.config.latent_channels, low_res.shape[2], low_res.shape[3])
    latents = randn_tensor(shape, generator=generators, device=ctx.device, dtype=vae.dtype)
    ctx.record.note(ctx.node_id, Seeds(seeds))
    return {"condition": Condition(concat=noised, class_labels=levels),
            "latents": Latents(latents, seeds, generators, "noise", vae.config.scaling_factor)}
