"""Facts about a VAE read from its config, shared by the validation checks of several nodes."""

from __future__ import annotations


def vae_scale_factor(vae_config: dict) -> int:
    """Pixels per latent along one side: 2 ** (number of blocks - 1), as diffusers' pipelines compute it."""
    blocks = vae_config.get("block_out_channels") or [0, 0, 0, 0]
    return 2 ** (len(blocks) - 1)


def latent_channels(vae_config: dict) -> int | None:
    return vae_config.get("latent_channels")


def check_image_fits_vae(ctx, image_meta: dict, vae_meta: dict) -> None:
    """Report (on the ``image`` field) an image side that the VAE cannot encode: not a multiple of its factor."""
    if not (image_meta and vae_meta):
        return
    factor = vae_scale_factor(vae_meta)
    for side in ("width", "height"):
        if image_meta.get(side) and image_meta[side] % factor:
            ctx.problem("image", f"the image's {side} ({image_meta[side]}) from '{ctx.source_of('image')}' must be a "
                        f"multiple of {factor} for this VAE; resize it (load_image width/height)")
