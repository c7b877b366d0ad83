"""Build a tiny random SD2-shaped model (v-prediction, 768-class layout) in diffusers' folder format.

It differs from the SD1-shaped ``tiny`` where stabilityai/stable-diffusion-2-1 differs from SD1: a UNet
with per-block attention head dims and linear projections, an OpenCLIP-style text encoder (gelu, a
projection width unlike its hidden width, a tokenizer that pads with "!"), a latent sample size that
makes 1.5x the SD1 image size (96 px here, 768 px for the real model), and a DDIM scheduler config with
``prediction_type: v_prediction`` written as the published checkpoint has it. The tiny configs follow
diffusers' tests/pipelines/stable_diffusion_2/test_stable_diffusion.py.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tiny import TINY_WORDS, make_vae, save_model_folder

# stabilityai/stable-diffusion-2-1's scheduler/scheduler_config.json, key for key (from_config drops
# defaults, so a swapped-in scheduler must see exactly what the published file holds).
SD2_SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SD2_PAD_TOKEN = "!"  # OpenCLIP's tokenizer pads with "!" rather than with <|endoftext|>


def make_sd2_unet(seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=48, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=32,
    ).eval()


def make_sd2_text_encoder(tokenizer, eos_id: int, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=5,
        vocab_size=len(tokenizer), hidden_act="gelu", projection_dim=64, initializer_range=0.1,
    )
    return CLIPTextModel(config).eval()


def build_tiny_sd2(folder: Path, seed: int = 20) -> Path:
    """An SD2-shaped text2img model: v-prediction DDIM, linear-projection UNet, gelu text encoder."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from .clip_vocab import end_token_id, write_clip_tokenizer_files

    folder = Path(folder)
    tok_dir = folder / "tokenizer"
    write_clip_tokenizer_files(TINY_WORDS, tok_dir)
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77,
                              pad_token=SD2_PAD_TOKEN)
    pipe = StableDiffusionPipeline(
        unet=make_sd2_unet(seed), vae=make_vae(seed + 1),
        text_encoder=make_sd2_text_encoder(tokenizer, end_token_id(tok_dir), seed + 2), tokenizer=tokenizer,
        scheduler=DDIMScheduler.from_config(SD2_SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    return save_model_folder(pipe, folder, {"scheduler": SD2_SCHEDULER_CONFIG})
