"""Facts about a VAE read from its config, shared by the validation checks of several nodes."""

from __future__ import annotations


def vae_scale_factor(vae_config: dict) -> int:
    """Pixels per latent along one side: 2 ** (number of blocks - 1), as diffusers' pipelines compute it."""
    blocks = vae_config.get("block_out_channels") or [0, 0, 0, 0]
    return 2 ** (len(blocks) - 1)


def latent_channels(vae_config: dict) -> int | None:
    return vae_config.get("latent_channels")
