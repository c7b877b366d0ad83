"""The Stable Diffusion vocabulary: importing this package registers every node type with the engine."""

from . import denoise, encode_prompt, images, latents, load_model, safety, save_image, scheduler, upscale  # noqa: F401
