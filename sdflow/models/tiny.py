"""Build the tiny random Stable Diffusion family from configs with fixed seeds, in diffusers' folder format.

Its images are noise, but every stage runs for real and loads through the same loaders as a real
checkpoint. Parity tests use it; so does anyone with no trained model at hand (``model=tiny``). The parts
here (tokenizer, UNet, VAE, text encoder, folder writer) are shared by the other families' builders
(tiny_*.py); sdflow.models.builtin builds each family once per machine.
Two folders: an SD1-shaped text2img/img2img model and an x4 upscaler shaped like
stabilityai/stable-diffusion-x4-upscaler (its tiny config follows diffusers' own tests).
"""

from __future__ import annotations

import json
from pathlib import Path

from .clip_vocab import end_token_id, write_clip_tokenizer_files

# Words of the examples in the README and tests, each one token; other text splits into characters.
TINY_WORDS = """a an the of on at in with and photo painting portrait of lighthouse dusk cat dog castle red
green blue yellow orange purple white black circle square triangle small large left right top bottom
center background blurry low quality""".split()

# How published SD1 checkpoints write their scheduler config; from_config drops defaults, so hand-write it.
SD1_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
UPSCALER_SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.02,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0001,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "trained_betas": None,
}
UPSCALER_LOW_RES_SCHEDULER_CONFIG = {
    "_class_name": "DDPMScheduler",
    "beta_end": 0.02,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0001,
    "clip_sample": True,
    "num_train_timesteps": 1000,
    "trained_betas": None,
    "variance_type": "fixed_small",
}


def make_tokenizer(folder: Path, words=TINY_WORDS):
    """Write CLIP tokenizer files into ``folder`` and return the loaded tokenizer."""
    from transformers import CLIPTokenizer

    write_clip_tokenizer_files(list(words), folder)
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    return tokenizer


def make_text_encoder(tokenizer, eos_id: int, seed: int, hidden_size: int = 32, projection_dim: int | None = None):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_id, pad_token_id=eos_id, hidden_size=hidden_size,
        intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=3,
        vocab_size=len(tokenizer), projection_dim=projection_dim or hidden_size, initializer_range=0.1,
    )
    return CLIPTextModel(config).eval()


def make_vae(seed: int, block_out_channels=(32, 64), scaling_factor: float = 0.18215):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    n = len(block_out_channels)
    vae = AutoencoderKL(
        block_out_channels=list(block_out_channels), in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
        latent_channels=4, sample_size=64, scaling_factor=scaling_factor, norm_num_groups=32,
    )
    # A random encoder's latents are mostly sampled noise, which would make img2img ignore its image:
    # strengthen the mean half of quant_conv and pin the log-variance half low.
    with torch.no_grad():
        half = vae.quant_conv.out_channels // 2
        vae.quant_conv.weight[:half] *= 4.0
        vae.quant_conv.weight[half:] = 0.0
        vae.quant_conv.bias[half:] = -10.0
    return vae.eval()


def make_unet(seed: int, in_channels: int = 4, cross_attention_dim: int = 32, sample_size: int = 32):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=sample_size, in_channels=in_channels,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross_attention_dim,
        attention_head_dim=8, norm_num_groups=32,
    ).eval()


def make_upscaler_unet(seed: int):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 32, 64), layers_per_block=1, sample_size=32, in_channels=7, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, use_linear_projection=True, only_cross_attention=(True, True, False),
        num_class_embeds=100, norm_num_groups=32,
    ).eval()


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def save_model_folder(pipe, folder: Path, scheduler_configs: dict[str, dict]) -> Path:
    """Save a pipeline's components as a diffusers folder, the way published checkpoints look.

    save_pretrained writes only tokenizer.json, so the vocab.json/merges.txt already written into each
    tokenizer folder are put back; scheduler configs are written by hand (``{subfolder: config}``)
    because from_config drops keys that were defaults.
    """
    kept = {p: p.read_bytes() for p in folder.glob("tokenizer*/*") if p.name in ("vocab.json", "merges.txt")}
    pipe.save_pretrained(folder, safe_serialization=True)
    for path, data in kept.items():
        path.write_bytes(data)
    for subfolder, config in scheduler_configs.items():
        write_json(folder / subfolder / "scheduler_config.json", config)
    return folder


def build_tiny_sd(folder: Path, seed: int = 0) -> Path:
    """An SD1-shaped text2img model: UNet, VAE, CLIP text encoder, tokenizer, PNDM scheduler config."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    folder = Path(folder)
    tok_dir = folder / "tokenizer"
    tokenizer = make_tokenizer(tok_dir)
    pipe = StableDiffusionPipeline(
        unet=make_unet(seed), vae=make_vae(seed + 1), text_encoder=make_text_encoder(tokenizer, end_token_id(tok_dir), seed + 2),
        tokenizer=tokenizer, scheduler=PNDMScheduler.from_config(SD1_SCHEDULER_CONFIG), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    return save_model_folder(pipe, folder, {"scheduler": SD1_SCHEDULER_CONFIG})


def build_tiny_upscaler(folder: Path, seed: int = 10) -> Path:
    """A tiny x4 upscaler: 7-channel UNet with noise-level class embeddings, a x4 VAE, v-prediction DDIM."""
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline

    folder = Path(folder)
    tok_dir = folder / "tokenizer"
    tokenizer = make_tokenizer(tok_dir)
    pipe = StableDiffusionUpscalePipeline(
        vae=make_vae(seed + 1, block_out_channels=(32, 32, 64), scaling_factor=0.08333),
        text_encoder=make_text_encoder(tokenizer, end_token_id(tok_dir), seed + 2), tokenizer=tokenizer,
        unet=make_upscaler_unet(seed), low_res_scheduler=DDPMScheduler.from_config(UPSCALER_LOW_RES_SCHEDULER_CONFIG),
        scheduler=DDIMScheduler.from_config(UPSCALER_SCHEDULER_CONFIG), max_noise_level=350,
    )
    return save_model_folder(pipe, folder, {"scheduler": UPSCALER_SCHEDULER_CONFIG,
                                            "low_res_scheduler": UPSCALER_LOW_RES_SCHEDULER_CONFIG})
