"""decode_rgbd: decode LDM3D latents into an RGB image and a depth map, as StableDiffusionLDM3DPipeline does.

An LDM3D-4c VAE decodes 4 channels: red, green, blue, then depth. The pipeline maps all four from
[-1, 1] to [0, 1] and splits them (``VaeImageProcessorLDM3D.postprocess``): rgb = the first 3 channels,
depth = the last one. The shared ``decode`` node stays RGB-only; this one has the extra DEPTH output.
"""

from __future__ import annotations

from ..engine import Input, RunContext, node
from .images import vae_modes
from .types import IMAGE, LATENTS, VAE, ImageFacts, Images, LatentFacts, Latents

RGBD_CHANNELS = 4


def check_decode_rgbd(params, inputs_meta, ctx):
    vae, latents = inputs_meta["vae"], inputs_meta["latents"] or LatentFacts()
    if vae and vae.out_channels not in (None, RGBD_CHANNELS):
        ctx.problem("vae", f"decode_rgbd needs an RGB + depth VAE with {RGBD_CHANNELS} output channels (an LDM3D-4c "
                    f"model like Intel/ldm3d-4c), but the VAE from '{ctx.source_of('vae')}' ({vae.source}) decodes "
                    f"{vae.out_channels}: run with model=ldm3d (or model=tiny_ldm3d), or point model.path at an "
                    "LDM3D-4c folder")
    elif vae and latents.channels and vae.latent_channels and latents.channels != vae.latent_channels:
        ctx.problem("latents", f"latents from '{ctx.source_of('latents')}' have {latents.channels} channels but the "
                    f"VAE from '{ctx.source_of('vae')}' decodes {vae.latent_channels}")
    return {"image": ImageFacts(channels=3, count=latents.count), "depth": ImageFacts(channels=1, count=latents.count)}


@node(
    "decode_rgbd",
    "Decode LDM3D latents into an RGB image and a depth map (1 channel in [0, 1]) with an RGB + depth VAE.",
    inputs={"vae": Input(VAE, "an LDM3D-4c VAE: 4 output channels, RGB then depth"), "latents": Input(LATENTS)},
    outputs={"image": IMAGE, "depth": IMAGE},
    check=check_decode_rgbd,
)
def decode_rgbd(ctx: RunContext, vae, latents: Latents):
    import torch

    with torch.no_grad(), vae_modes(ctx, vae):
        decoded = vae.decode(latents.samples.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    pixels = (decoded / 2 + 0.5).clamp(0, 1)
    seeds = list(latents.seeds)
    return {"image": Images(pixels[:, :3], seeds), "depth": Images(pixels[:, 3:], list(seeds))}
