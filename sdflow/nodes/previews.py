"""Step previews: what the latents of a denoise loop look like every N steps, cheaply or exactly.

The run layer installs ``step_callback`` as a run's ``RunContext.on_step`` when ``preview_every > 0`` (the
command writes the previews into ``previews/`` of the run folder) or when a caller (the web UI) asks for step
events. The cheap preview is a linear map from latent channels to RGB, fitted once per VAE (and kept in the
component cache) by least squares on a few images the VAE encodes; ``exact`` decodes the latents with the VAE
itself. The VAE is the one the run already holds, found by its port type; neither kind changes the run.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from PIL import Image

from ..engine import RunContext
from .offload import compute_device
from .types import VAE

if TYPE_CHECKING:
    import torch


@dataclass
class StepPreview:
    """One denoise step done: ``step`` of ``total`` (1-based) in ``node``; ``image`` on preview steps, else None.

    ``image`` tiles the batch's images in a grid, in batch order.
    """

    node: str
    step: int
    total: int
    image: Image.Image | None = None


@dataclass
class PreviewFile:
    """A preview image as the bytes of a PNG file (for the run's writer)."""

    image: Image.Image

    def __call__(self, file_name: str) -> bytes:
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG")
        return buffer.getvalue()


def step_callback(ctx: RunContext, every: int, exact: bool,
                  on_preview: Callable[[StepPreview], None] | None = None) -> Callable:
    """The ``on_step(node_id, step_index, total_steps, latents)`` callback of a run.

    Every ``every`` steps (and at each loop's last step) it makes a preview image; ``on_preview`` gets a
    StepPreview after every step (image or not). Without ``on_preview``, previews go to the run's files as
    ``previews/NODE_stepNNN.png`` (side files, not among its images).
    """
    vaes: dict[str, tuple] = {}  # denoise node -> (its VAE, the cache key of the VAE's fitted map), looked up once

    def on_step(node_id: str, index: int, total: int, latents: torch.Tensor) -> None:
        step = index + 1
        image = None
        if every > 0 and (step % every == 0 or step == total):
            if node_id not in vaes:
                vaes[node_id] = preview_vae(ctx, node_id)
            image = preview_image(ctx, latents, *vaes[node_id], exact)
        if on_preview is not None:
            on_preview(StepPreview(node_id, step, total, image))
        elif image is not None and ctx.files is not None:
            ctx.files.write(f"previews/{node_id}_step{step:03d}.png", PreviewFile(image), node_id, listed=False)

    return on_step


def preview_image(ctx: RunContext, latents: torch.Tensor, vae, map_key, exact: bool) -> Image.Image:
    """The batch's latents as one RGB image: VAE-decoded (``exact``) or through the VAE's fitted linear map."""
    import torch

    with torch.no_grad():
        if vae is None:  # no VAE to read: the first three channels, stretched to [0, 1]
            pixels = _stretch(latents[:, :3].float())
        elif exact:
            decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
            pixels = (decoded[:, :3].float() / 2 + 0.5).clamp(0, 1)
        else:
            weights = ctx.cache.get(map_key, lambda: fit_latent_rgb(vae)) if map_key else fit_latent_rgb(vae)
            pixels = latents_to_rgb(latents, weights, vae_factor(vae))
    return tile(pixels)


def preview_vae(ctx: RunContext, node_id: str) -> tuple:
    """(VAE, cache key of its fitted map or None) for the VAE that decodes (else made) ``node_id``'s latents, or
    (None, None).

    The VAE is a value the run already holds: the output wired into a VAE input of a node after ``node_id`` (the
    decode), else before it, that has been made by now.
    """
    import networkx as nx

    plan = ctx.plan
    later = [n for n in plan.order if n in nx.descendants(plan.graph, node_id)]
    earlier = [n for n in reversed(plan.order) if n in nx.ancestors(plan.graph, node_id)]
    for other in later + earlier:
        for name, ref in plan.nodes[other].inputs.items():
            vae = ctx.results.get(ref.node, {}).get(ref.output)
            if plan.nodes[other].spec.inputs[name].type == VAE and vae is not None:
                held = ctx.cache.key_of(vae)  # a VAE from the cache: its fitted map is kept beside it
                return vae, (held, "latent_rgb_map") if held is not None else None
    return None, None


def vae_factor(vae) -> int:
    """How many pixels one latent spans: 2 per down block after the first (8 for Stable Diffusion's VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def fit_latent_rgb(vae, size: int = 64) -> torch.Tensor:
    """[C + 1, 3]: least-squares weights and bias from a latent's C channels to the RGB it decodes to.

    Fitted on 48 images the VAE encodes (solid colours and coarse random blocks, fixed seed), each
    compared with its own pixels averaged over the patch one latent covers.
    """
    import torch
    import torch.nn.functional as F

    channels = vae.config.in_channels
    generator = torch.Generator().manual_seed(0)
    solid = torch.rand(24, channels, 1, 1, generator=generator).expand(-1, -1, size, size)
    blocks = F.interpolate(torch.rand(24, channels, 4, 4, generator=generator), size=(size, size), mode="nearest")
    images = torch.cat([solid, blocks])
    with torch.no_grad():
        latents = vae.encode((images * 2 - 1).to(compute_device(vae), vae.dtype)).latent_dist.mean.float().cpu()
    latents = latents * vae.config.scaling_factor
    pixels = F.interpolate(images[:, :3], size=latents.shape[-2:], mode="area")
    x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    y = pixels.permute(0, 2, 3, 1).reshape(-1, 3)
    return torch.linalg.lstsq(x, y).solution


def latents_to_rgb(latents: torch.Tensor, weights: torch.Tensor, factor: int) -> torch.Tensor:
    """[N, 3, H, W] pixels in [0, 1] from [N, C, h, w] latents through the fitted map, H = h * factor."""
    import torch.nn.functional as F

    x = latents.detach().float().cpu()
    rgb = (x.permute(0, 2, 3, 1) @ weights[:-1] + weights[-1]).permute(0, 3, 1, 2).clamp(0, 1)
    return F.interpolate(rgb, scale_factor=factor, mode="bilinear", align_corners=False).clamp(0, 1)


def _stretch(x: torch.Tensor) -> torch.Tensor:
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    high = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - low) / (high - low).clamp_min(1e-6)


def tile(pixels: torch.Tensor) -> Image.Image:
    """[N, 3, H, W] pixels in [0, 1] as one image: a grid with ceil(sqrt(N)) columns."""
    from .images import pixels_to_pil

    images = pixels_to_pil(pixels.float().cpu())
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * width, (index // columns) * height))
    return grid
