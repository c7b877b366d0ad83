"""The Stable Diffusion vocabulary: importing this package registers every node type with the engine."""

from . import denoise, encode_prompt, images, latents, load_model, safety, save_image, scheduler, upscale  # noqa: F401
from . import image_prompt, safe_guidance  # noqa: F401
from . import latent_upscale, rgbd  # noqa: F401
from . import depth, inpaint, mask  # noqa: F401
from . import sdxl  # noqa: F401
from . import adapters  # noqa: F401
from . import load_vae  # noqa: F401
from . import controlnet  # noqa: F401
