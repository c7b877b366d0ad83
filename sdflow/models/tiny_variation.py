"""Build a tiny random image-variation model (lambdalabs/sd-image-variations-diffusers' layout).

Instead of a text encoder it has a CLIP vision encoder with projection and its image processor: the
UNet attends to one projected image embedding. The tiny configs follow diffusers'
tests/pipelines/stable_diffusion_image_variation/test_stable_diffusion_image_variation.py.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tiny import SD1_SCHEDULER_CONFIG, make_unet, make_vae, save_model_folder

# The published image processor config, at the tiny encoder's 32 px input instead of 224 px.
FEATURE_EXTRACTOR_CONFIG = {
    "crop_size": 32, "size": 32, "do_center_crop": True, "do_normalize": True, "do_resize": True, "resample": 3,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
}


def make_image_encoder(seed: int, projection_dim: int = 32):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    # With default init, different images embed at cosine ~0.99, so a variation would hardly depend on its
    # image. A larger init factor separates them (cosine ~0.85 for a flipped image); scaling the projection
    # back down keeps the embedding's norm near a text embedding's, which the UNet is built for.
    config = CLIPVisionConfig(
        hidden_size=32, projection_dim=projection_dim, intermediate_size=37, layer_norm_eps=1e-05,
        num_attention_heads=4, num_hidden_layers=5, image_size=32, patch_size=4, initializer_factor=10.0,
        initializer_range=0.5,
    )
    encoder = CLIPVisionModelWithProjection(config)
    with torch.no_grad():
        encoder.visual_projection.weight *= 0.1
    return encoder.eval()


def build_tiny_variation(folder: Path, seed: int = 30) -> Path:
    """A tiny image-variation model: UNet, VAE, CLIP vision encoder, image processor, PNDM scheduler."""
    from diffusers import PNDMScheduler, StableDiffusionImageVariationPipeline
    from transformers import CLIPImageProcessor


    folder = Path(folder)
    pipe = StableDiffusionImageVariationPipeline(
        vae=make_vae(seed + 1), image_encoder=make_image_encoder(seed + 2), unet=make_unet(seed),
        scheduler=PNDMScheduler.from_config(SD1_SCHEDULER_CONFIG),
        feature_extractor=CLIPImageProcessor(**FEATURE_EXTRACTOR_CONFIG), safety_checker=None,
        requires_safety_checker=False,
    )
    return save_model_folder(pipe, folder, {"scheduler": SD1_SCHEDULER_CONFIG})
