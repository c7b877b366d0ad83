"""Build the tiny random depth-to-image model: a 5-channel UNet (latents + depth) and a tiny DPT.

Shaped like stabilityai/stable-diffusion-2-depth as diffusers' own depth2img tests shrink it, with a
plain (non-hybrid) DPT so no backbone weights are needed. Its feature extractor is transformers'
``DPTImageProcessorPil`` (the class transformers picks without torchvision).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tiny import make_text_encoder, make_tokenizer, make_unet, make_vae, save_model_folder
from .tiny_inpaint import SD2_PNDM_SCHEDULER_CONFIG

# sd2-depth's preprocessor_config.json, at 32 px instead of 384.
DPT_PROCESSOR_CONFIG = dict(do_resize=True, size={"height": 32, "width": 32}, keep_aspect_ratio=False,
                            ensure_multiple_of=1, resample=3, do_rescale=True, do_normalize=True,
                            image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def make_depth_estimator(seed: int):
    """A tiny DPT whose depth really varies with its image.

    A default-initialised DPT predicts depth ~1e-9 everywhere, which the pipeline's min/max normalisation
    turns into amplified float noise: raise the init range and bias the last head conv away from its ReLU.
    """
    from transformers import DPTConfig, DPTForDepthEstimation

    torch.manual_seed(seed)
    config = DPTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=4,
        backbone_out_indices=(0, 1, 2, 3), num_attention_heads=4, intermediate_size=37, initializer_range=0.12,
        neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_in_index=-1, is_hybrid=False,
    )
    model = DPTForDepthEstimation(config).eval()
    with torch.no_grad():
        model.head.head[4].bias.fill_(1.0)
    return model


def build_tiny_depth(folder: Path, seed: int = 30) -> Path:
    """A tiny SD depth2img model: 5-channel UNet, VAE, CLIP text encoder, tokenizer, DPT, PNDM config."""
    from diffusers import PNDMScheduler, StableDiffusionDepth2ImgPipeline
    from transformers import DPTImageProcessorPil

    from .clip_vocab import end_token_id

    folder = Path(folder)
    tok_dir = folder / "tokenizer"
    tokenizer = make_tokenizer(tok_dir)
    pipe = StableDiffusionDepth2ImgPipeline(
        unet=make_unet(seed, in_channels=5), vae=make_vae(seed + 1),
        text_encoder=make_text_encoder(tokenizer, end_token_id(tok_dir), seed + 2), tokenizer=tokenizer,
        scheduler=PNDMScheduler.from_config(SD2_PNDM_SCHEDULER_CONFIG), depth_estimator=make_depth_estimator(seed + 3),
        feature_extractor=DPTImageProcessorPil(**DPT_PROCESSOR_CONFIG),
    )
    return save_model_folder(pipe, folder, {"scheduler": SD2_PNDM_SCHEDULER_CONFIG})
