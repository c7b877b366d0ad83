"""Port types of the Stable Diffusion vocabulary, and the values that travel along them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..engine import PortType

UNET = PortType("UNET", "a denoising UNet (UNet2DConditionModel)")
VAE = PortType("VAE", "a variational autoencoder (AutoencoderKL)")
TEXT_ENCODER = PortType("TEXT_ENCODER", "a CLIP text encoder")
TOKENIZER = PortType("TOKENIZER", "a CLIP tokenizer")
SCHEDULER = PortType("SCHEDULER", "a diffusers noise scheduler (a fresh copy is used per run)")
SAFETY_CHECKER = PortType("SAFETY_CHECKER", "a safety checker and its feature extractor, or none")
IMAGE_ENCODER = PortType("IMAGE_ENCODER", "a CLIP vision encoder with projection (image variation)")
IMAGE_PROCESSOR = PortType("IMAGE_PROCESSOR", "an image processor (feature extractor) preparing model inputs")
DEPTH_ESTIMATOR = PortType("DEPTH_ESTIMATOR", "a monocular depth model (DPT)")
EMBEDDINGS = PortType("EMBEDDINGS", "prompt and negative-prompt text embeddings")
LATENTS = PortType("LATENTS", "latents with one seed and generator per image")
IMAGE = PortType("IMAGE", "a batch of RGB images in [0, 1]")
CONDITION = PortType("CONDITION", "extra UNet conditioning: channels concatenated to the latents, class labels")


@dataclass
class Embeddings:
    """Text embeddings for one prompt: ``positive`` and ``negative`` are [1, tokens, dim]."""

    positive: torch.Tensor
    negative: torch.Tensor | None
    prompt: str
    negative_prompt: str


@dataclass
class Latents:
    """A batch of latents, one seed and one generator per image.

    ``kind`` says what the samples are: ``noise`` (unit Gaussian, not yet scaled by the scheduler),
    ``image`` (an encoded image, to be noised by img2img ``strength``) or ``denoised``.
    Each image's generator is its single stream of randomness, consumed in workflow order, so an image
    never depends on the batch it was made in.
    """

    samples: torch.Tensor
    seeds: list[int]
    generators: list[torch.Generator]
    kind: str
    scaling_factor: float | None = None


@dataclass
class Images:
    """RGB images [N, 3, H, W] in [0, 1] with the seeds that made them and safety flags."""

    pixels: torch.Tensor
    seeds: list[int]
    flagged: list[bool] = field(default_factory=list)


@dataclass
class Condition:
    """Extra UNet inputs that stay fixed through the loop.

    ``concat`` [N, C, h, w] is appended to the (scaled) latents on the channel axis, as the x4 upscaler,
    inpainting and depth UNets expect; ``class_labels`` [N] go to the UNet's class embedding.
    """

    concat: torch.Tensor | None = None
    class_labels: torch.Tensor | None = None


@dataclass
class SafetyChecker:
    """A safety checker model with the feature extractor that prepares its input."""

    model: object
    feature_extractor: object


def seeds_list(seed: int | list[int], batch_size: int = 1) -> list[int]:
    """``seed`` may be one int (expanded to ``batch_size`` consecutive seeds) or an explicit list."""
    if isinstance(seed, list):
        return list(seed)
    return [seed + i for i in range(batch_size)]


def generators_for(seeds: list[int], device: str) -> list[torch.Generator]:
    """One generator per image, never a shared one."""
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]
