"""Build a ControlNet for a model's UNet the way diffusers starts training one: ControlNetModel.from_unet.

from_unet copies the UNet's encoder and zero-initialises the ControlNet's output convolutions (and the last
conv of its image embedding), so a fresh ControlNet changes nothing. Tests need one whose control image
moves the output: ``random_outputs`` fills those zero layers with small random weights from a fixed seed.
No trained ControlNet ships with sdflow; this makes an untrained one for a model folder (the tiny models,
or the offline ``shapes`` model) in diffusers' folder format (config.json + safetensors)::

    python -m sdflow.models.tiny_controlnet builtin:shapes shapes-controlnet
"""

from __future__ import annotations

import sys
from pathlib import Path


def random_outputs(controlnet, seed: int, std: float = 0.1):
    """Give the zero-initialised layers (the zero convs and the image embedding's conv_out) random weights."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    # the image embedding's output much larger: a random one barely tells control images apart otherwise
    zeroed = [(layer, std) for layer in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block)]
    zeroed.append((controlnet.controlnet_cond_embedding.conv_out, 10 * std))
    with torch.no_grad():
        for layer, scale in zeroed:
            for tensor in (layer.weight, layer.bias):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)
    return controlnet


def embedding_channels(vae_scale_factor: int) -> tuple[int, ...]:
    """The image embedding's channels for a VAE that shrinks images ``vae_scale_factor`` times: each block after
    the first halves the control image, which must come out at the latents' size (SD's 8: diffusers' default)."""
    channels = (16, 32, 96, 256)
    blocks = vae_scale_factor.bit_length()  # 8 -> 4 blocks, 2 -> 2 blocks
    return channels[:blocks] if blocks <= len(channels) else channels + (256,) * (blocks - len(channels))


def make_controlnet(unet, seed: int, randomize: bool = True, vae_scale_factor: int = 8, latent_channels: int = 4):
    """ControlNetModel.from_unet(unet), its zero layers made random (``randomize``) so the control image counts.

    An inpainting or depth UNet takes more channels than the latents; a ControlNet sees the latents alone (as
    published inpainting ControlNets, trained from the base model), so its first conv is then made anew."""
    import torch
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=embedding_channels(
        vae_scale_factor)).eval()
    if controlnet.config.in_channels != latent_channels:
        torch.manual_seed(seed)
        narrow = ControlNetModel.from_config({**controlnet.config, "in_channels": latent_channels}).eval()
        state = {k: v for k, v in controlnet.state_dict().items() if not k.startswith("conv_in.")}
        narrow.load_state_dict(state, strict=False)
        controlnet = narrow
    return random_outputs(controlnet, seed) if randomize else controlnet


def build_controlnet(model_folder: Path, folder: Path, seed: int = 40, randomize: bool = True) -> Path:
    """A ControlNet from ``model_folder``'s UNet, saved as a diffusers ControlNet folder in ``folder``."""
    import json

    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(model_folder) / "unet", use_safetensors=True)
    vae_config = json.loads((Path(model_folder) / "vae" / "config.json").read_text(encoding="utf-8"))
    factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
    make_controlnet(unet, seed, randomize, factor, vae_config.get("latent_channels", 4)).save_pretrained(
        folder, safe_serialization=True)
    return Path(folder)


def main(argv: list[str]) -> int:
    """``python -m sdflow.models.tiny_controlnet MODEL OUT_FOLDER``: MODEL a model folder or builtin:NAME."""
    if len(argv) != 2:
        print("usage: python -m sdflow.models.tiny_controlnet MODEL OUT_FOLDER  (MODEL: a folder or builtin:NAME)")
        return 2
    from .sources import resolve_source

    model, out = argv
    print(build_controlnet(resolve_source(model).folder, Path(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
