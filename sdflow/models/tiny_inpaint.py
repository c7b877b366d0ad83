"""Build the tiny random inpainting model: a 9-channel UNet (latents + mask + masked-image latents).

Shaped like stabilityai/stable-diffusion-2-inpainting as diffusers' own inpaint tests shrink it; the rest
(VAE, CLIP text encoder, tokenizer) is the tiny SD family's, so its masked-image latents carry the image.
Legacy inpainting with a plain 4-channel UNet needs no model of its own: it runs on ``builtin:tiny``.
"""

from __future__ import annotations

from pathlib import Path

from .tiny import make_text_encoder, make_tokenizer, make_unet, make_vae, save_model_folder

# As published SD2 inpainting/depth checkpoints write it (PNDM, epsilon prediction); hand-written because
# from_config drops defaults.
SD2_PNDM_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


def build_tiny_inpaint(folder: Path, seed: int = 20) -> Path:
    """A tiny SD inpainting model: 9-channel UNet, VAE, CLIP text encoder, tokenizer, PNDM config."""
    from diffusers import PNDMScheduler, StableDiffusionInpaintPipeline

    from .clip_vocab import end_token_id

    folder = Path(folder)
    tok_dir = folder / "tokenizer"
    tokenizer = make_tokenizer(tok_dir)
    pipe = StableDiffusionInpaintPipeline(
        unet=make_unet(seed, in_channels=9), vae=make_vae(seed + 1),
        text_encoder=make_text_encoder(tokenizer, end_token_id(tok_dir), seed + 2), tokenizer=tokenizer,
        scheduler=PNDMScheduler.from_config(SD2_PNDM_SCHEDULER_CONFIG), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    return save_model_folder(pipe, folder, {"scheduler": SD2_PNDM_SCHEDULER_CONFIG})
