"""Build a tiny random x2 latent upscaler shaped like stabilityai/sd-x2-latent-upscaler, in diffusers' format.

Its UNet follows diffusers' own latent-upscaler tests (K-diffusion blocks, Fourier time embedding,
8 input channels = 4 latent + 4 image-condition channels, 5 output channels). ``time_cond_proj_dim``
is 128 (the noise-level embedding) + the text encoder's hidden size (its pooled output). The VAE is
the tiny SD1 family's own (same config and seed), as the real upscaler ships SD1's VAE, so latents
from ``builtin:tiny`` decode sensibly after upscaling.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .clip_vocab import end_token_id
from .tiny import make_text_encoder, make_tokenizer, make_vae, save_model_folder

TEXT_HIDDEN_SIZE = 32
NOISE_LEVEL_EMBED_DIM = 128  # the pipeline's fixed [ones(64), zeros(64)] noise-level embedding
TINY_SD_VAE_SEED = 1  # build_tiny_sd(seed=0) makes its VAE with seed + 1

# As the published upscaler writes its scheduler config (from_config would drop defaults; see TINY_MODELS.md).
LATENT_UPSCALER_SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "sample",
    "steps_offset": 1,
    "trained_betas": None,
}


def make_latent_upscaler_unet(seed: int, latent_channels: int = 4):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    # K blocks need >= 32 channels per block (their group norms), so the tiny UNet keeps the test's widths.
    return UNet2DConditionModel(
        act_fn="gelu", attention_head_dim=8, norm_num_groups=None, block_out_channels=[32, 32, 64, 64],
        time_cond_proj_dim=NOISE_LEVEL_EMBED_DIM + TEXT_HIDDEN_SIZE, conv_in_kernel=1, conv_out_kernel=1,
        cross_attention_dim=TEXT_HIDDEN_SIZE,
        down_block_types=("KDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D"),
        in_channels=2 * latent_channels, mid_block_type=None, only_cross_attention=False,
        out_channels=latent_channels + 1, resnet_time_scale_shift="scale_shift", time_embedding_type="fourier",
        timestep_post_act="gelu",
        up_block_types=("KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KUpBlock2D"),
    ).eval()


def build_tiny_latent_upscaler(folder: Path, seed: int = 20) -> Path:
    """A tiny x2 latent upscaler: K-UNet, CLIP text encoder (hidden + pooled), the tiny SD VAE, Euler (sample)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionLatentUpscalePipeline


    folder = Path(folder)
    tok_dir = folder / "tokenizer"
    tokenizer = make_tokenizer(tok_dir)
    pipe = StableDiffusionLatentUpscalePipeline(
        vae=make_vae(TINY_SD_VAE_SEED),
        text_encoder=make_text_encoder(tokenizer, end_token_id(tok_dir), seed + 2, hidden_size=TEXT_HIDDEN_SIZE),
        tokenizer=tokenizer, unet=make_latent_upscaler_unet(seed),
        scheduler=EulerDiscreteScheduler.from_config(LATENT_UPSCALER_SCHEDULER_CONFIG),
    )
    return save_model_folder(pipe, folder, {"scheduler": LATENT_UPSCALER_SCHEDULER_CONFIG})
