"""Build a tiny random LDM3D model (RGB + depth), shaped like Intel/ldm3d-4c, in diffusers' folder format.

It is the tiny SD1 family with one change that matters: the VAE decodes 4 channels, RGB then depth,
as LDM3D-4c's does (the configs follow diffusers' own LDM3D tests, with 4 instead of 6 channels).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .clip_vocab import end_token_id
from .tiny import SD1_SCHEDULER_CONFIG, make_text_encoder, make_tokenizer, make_unet, save_model_folder

RGBD_CHANNELS = 4  # LDM3D-4c: red, green, blue, depth


def make_rgbd_vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[32, 64], in_channels=RGBD_CHANNELS, out_channels=RGBD_CHANNELS,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4, sample_size=64, scaling_factor=0.18215, norm_num_groups=32,
    ).eval()


def build_tiny_ldm3d(folder: Path, seed: int = 30) -> Path:
    """A text-to-RGBD model: SD1-shaped UNet and CLIP text encoder, a 4-channel (RGB + depth) VAE, PNDM."""
    from diffusers import PNDMScheduler, StableDiffusionLDM3DPipeline


    folder = Path(folder)
    tok_dir = folder / "tokenizer"
    tokenizer = make_tokenizer(tok_dir)
    pipe = StableDiffusionLDM3DPipeline(
        vae=make_rgbd_vae(seed + 1), text_encoder=make_text_encoder(tokenizer, end_token_id(tok_dir), seed + 2),
        tokenizer=tokenizer, unet=make_unet(seed), scheduler=PNDMScheduler.from_config(SD1_SCHEDULER_CONFIG),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )
    return save_model_folder(pipe, folder, {"scheduler": SD1_SCHEDULER_CONFIG})
