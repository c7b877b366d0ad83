"""init_latents: the starting noise of text2img, one seed (and generator) per image."""

from __future__ import annotations

from ..engine import Input, Param, RunContext, node
from .types import SEEDS, LATENTS, VAE, LatentFacts, Latents, check_seed_batch, generators_for, seeds_list
from .images import over_max_pixels
from .records import Seeds


def check_init_latents(params, inputs_meta, ctx):
    vae = inputs_meta["vae"]
    check_seed_batch(params, ctx)
    over_max_pixels(ctx, "width", params["width"], params["height"], "the output size")
    count = len(seeds_list(params["seed"], params["batch_size"]))
    size = (params["width"], params["height"])
    if vae is None:
        return {"latents": LatentFacts(kind="noise", count=count, size=size)}
    for name in ("width", "height"):
        if params[name] % vae.scale_factor:
            ctx.problem(name, f"must be a multiple of {vae.scale_factor} (this VAE's downscale factor), "
                        f"given {params[name]}")
    return {"latents": LatentFacts(kind="noise", channels=vae.latent_channels, scaling_factor=vae.scaling_factor,
                                   count=count, size=size)}


@node(
    "init_latents",
    "Draw Gaussian starting latents for text2img: width x height pixels, one image per seed.",
    inputs={"vae": Input(VAE, "sets the latent channels and the pixel-to-latent downscale")},
    outputs={"latents": LATENTS},
    params={
        "width": Param(int, 512, min=8, max=8192),
        "height": Param(int, 512, min=8, max=8192),
        "seed": Param(SEEDS, doc="one seed, or a list of seeds (one image each)", per_image=True),
        "batch_size": Param(int, 1, min=1, max=256, count_of="seed", doc="images when seed is a single int: seed, seed+1, ..."),
    },
    check=check_init_latents,
)
def init_latents(ctx: RunContext, vae, width: int, height: int, seed, batch_size: int):
    from diffusers.utils.torch_utils import randn_tensor

    seeds = seeds_list(seed, batch_size)
    generators = generators_for(seeds, "cpu")  # CPU generators: the same image on every device
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    shape = (len(seeds), vae.config.latent_channels, height // factor, width // factor)
    samples = randn_tensor(shape, generator=generators, device=ctx.device, dtype=vae.dtype)
    ctx.record.note(ctx.node_id, Seeds(seeds))
    return {"latents": Latents(samples, seeds, generators, "noise", vae.config.scaling_factor)}
