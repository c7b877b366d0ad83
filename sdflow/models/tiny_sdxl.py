"""Build the tiny random SDXL base and refiner in diffusers' folder format.

Shaped like stabilityai/stable-diffusion-xl-base-1.0 and -refiner-1.0 as diffusers' own tests shrink them
(tests/pipelines/stable_diffusion_xl): the base has two text encoders (CLIPTextModel and
CLIPTextModelWithProjection, whose penultimate hidden states are concatenated) and a UNet with the
"text_time" added embedding (6 time ids x 8 + 32 pooled); the refiner has only the second text encoder
and takes aesthetic scores (5 time ids x 8 + 32 pooled). The refiner's VAE and second text encoder are
built from the same seeds as the base's, as the published refiner ships the same ones.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tiny import TINY_WORDS, save_model_folder

# stabilityai/stable-diffusion-xl-base-1.0's scheduler/scheduler_config.json, key for key (from_config
# drops defaults, so a swapped-in scheduler must see exactly what the published file holds).
SDXL_SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
SDXL_VAE_SCALING = 0.13025  # the SDXL VAE's, unlike SD1's 0.18215: latents of one do not fit the other


def make_sdxl_unet(seed: int, cross_attention_dim: int, time_ids: int, pooled_dim: int = 32):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=time_ids * 8 + pooled_dim, cross_attention_dim=cross_attention_dim,
    )
    # Default-initialised, the added embedding barely moves the output, so a test of the size or
    # aesthetic conditioning would pass blind: strengthen it.
    with torch.no_grad():
        unet.add_embedding.linear_1.weight *= 8.0
    return unet.eval()


def make_sdxl_vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4, sample_size=128, scaling_factor=SDXL_VAE_SCALING,
    ).eval()


def make_text_encoders(folder: Path, seed: int, first: bool = True):
    """Tokenizers and text encoders under ``folder``; the second tokenizer pads with "!" as SDXL's does."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from .clip_vocab import end_token_id, write_clip_tokenizer_files

    parts = {}
    for name, cls, pad, offset in (("", CLIPTextModel, None, 0), ("_2", CLIPTextModelWithProjection, "!", 1)):
        if name == "" and not first:
            continue
        tok_dir = folder / f"tokenizer{name}"
        write_clip_tokenizer_files(TINY_WORDS, tok_dir)
        extra = {"pad_token": pad} if pad else {}
        tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77, **extra)
        eos = end_token_id(tok_dir)
        torch.manual_seed(seed + offset)
        # A real EOS id (not 2) so CLIP pools at the end token; a wide init so text moves the output.
        config = CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=eos, hidden_size=32,
            intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=3,
            vocab_size=len(tokenizer), projection_dim=32, hidden_act="gelu", initializer_range=0.1,
        )
        parts[f"tokenizer{name}"] = tokenizer
        parts[f"text_encoder{name}"] = cls(config).eval()
    return parts


def _save(pipe, folder: Path) -> Path:

    return save_model_folder(pipe, folder, {"scheduler": SDXL_SCHEDULER_CONFIG})


def build_tiny_sdxl(folder: Path, seed: int = 30) -> Path:
    """A tiny SDXL base: two text encoders, a text_time UNet (6 time ids), SDXL-scaled VAE, Euler config."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    folder = Path(folder)
    pipe = StableDiffusionXLPipeline(
        unet=make_sdxl_unet(seed, cross_attention_dim=64, time_ids=6), vae=make_sdxl_vae(seed + 1),
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG), force_zeros_for_empty_prompt=True,
        add_watermarker=False, **make_text_encoders(folder, seed + 2),
    )
    return _save(pipe, folder)


def build_tiny_sdxl_refiner(folder: Path, seed: int = 30) -> Path:
    """A tiny SDXL refiner: the base's VAE and second text encoder, a UNet taking aesthetic scores (5 time ids)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline

    folder = Path(folder)
    pipe = StableDiffusionXLImg2ImgPipeline(
        unet=make_sdxl_unet(seed + 10, cross_attention_dim=32, time_ids=5), vae=make_sdxl_vae(seed + 1),
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG), text_encoder=None, tokenizer=None,
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False, add_watermarker=False,
        **make_text_encoders(folder, seed + 2, first=False),
    )
    return _save(pipe, folder)
