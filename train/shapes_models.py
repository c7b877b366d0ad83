"""Architectures of the "shapes" default model family (base 64 px model and x4 upscaler).

Sized for a CPU training budget: the base UNet works on 16x16x4 latents (8x8 latents lose shapes),
the VAE has no attention so it is fully convolutional and can be trained on crops and reused (after
fine-tuning on whole 256 px renders) by the upscaler.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

TEXT_HIDDEN = 64


def make_text_encoder(vocab_size: int, eos_id: int, bos_id: int, seed: int) -> CLIPTextModel:
    """A small CLIP text encoder at its seeded random initialisation (frozen, requires_grad off).

    train_shapes.py's text phase then trains it to read captions and freezes it again for the
    other phases: a frozen random one kept every word distinct but not which colour word belonged
    to the shape and which to the background. eos_token_id is the vocabulary's real EOS id: with 2,
    CLIP falls back to legacy argmax pooling.
    """
    import torch

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=4 * TEXT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=TEXT_HIDDEN,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        # Larger than the default 0.02 so token identity dominates the (equally random) positions.
        initializer_range=0.1,
    )
    model = CLIPTextModel(config).eval()
    model.requires_grad_(False)
    return model


def make_vae(width: int = 32) -> AutoencoderKL:
    """64x64x3 <-> 16x16x4 (three blocks, two downsamplings), no attention: fully convolutional."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(width, 2 * width, 2 * width),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
        mid_block_add_attention=False,
    )


def make_unet(width: int = 64) -> UNet2DConditionModel:
    """Text-conditioned UNet on 16x16x4 latents."""
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        # Attention only at 8x8 and 4x4: CPU attention at 16x16 cost 3x the whole step.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(width, 2 * width, 2 * width),
        layers_per_block=1,
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=16,
        norm_num_groups=16,
    )


def make_upscaler_unet(width: int = 32) -> UNet2DConditionModel:
    """x4 upscaler UNet shaped like stable-diffusion-x4-upscaler's.

    in_channels 7 = 4 noisy latents + 3 noise-augmented low-res RGB; noise_level enters as a class
    embedding (num_class_embeds), as in diffusers' tiny upscaler test config. No attention: the
    low-res image already says what to draw, so the text is not needed and the net stays fully
    convolutional (trainable on crops, run at 64x64 latents).
    """
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=7,
        out_channels=4,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2D",
        block_out_channels=(width, width, 2 * width),
        layers_per_block=1,
        cross_attention_dim=TEXT_HIDDEN,
        norm_num_groups=16,
        num_class_embeds=1000,
    )
