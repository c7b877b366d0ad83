"""Facts about a VAE read from its config, shared by the validation checks of several nodes."""

from __future__ import annotations

from .types import ImageFacts, VAEFacts


def vae_facts(source: str, config: dict) -> VAEFacts:
    """A VAE's facts from its config.json; the downscale is 2 ** (blocks - 1), as diffusers' pipelines compute it."""
    blocks = config.get("block_out_channels") or [0, 0, 0, 0]
    return VAEFacts(source, latent_channels=config.get("latent_channels"), scaling_factor=config.get("scaling_factor"),
                    scale_factor=2 ** (len(blocks) - 1), out_channels=config.get("out_channels"))


def check_image_fits_vae(ctx, image: ImageFacts | None, vae: VAEFacts | None) -> None:
    """Report (on the ``image`` field) an image side that the VAE cannot encode: not a multiple of its factor."""
    if image is None or vae is None:
        return
    factor = vae.scale_factor
    for side, size in (("width", image.width), ("height", image.height)):
        if size and size % factor:
            ctx.problem("image", f"the image's {side} ({size}) from '{ctx.source_of('image')}' must be a "
                        f"multiple of {factor} for this VAE; resize it (load_image width/height)")
