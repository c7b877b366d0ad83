"""What the denoise loop does with ControlNet conditions: their static checks against the UNet and the latents, and
each step's summed residuals, as diffusers' ControlNet pipelines (and MultiControlNetModel) make them."""

from __future__ import annotations

from dataclasses import replace

from .memory import rows
from .types import ControlFacts, ControlNetCondition, LatentFacts, UNetFacts


def check_control(control: ControlFacts, unet: UNetFacts | None, latents: LatentFacts, ctx) -> None:
    """Each ControlNet fits the UNet it steers (text width, latent channels, SDXL or not), each control image batch
    has one image or one per image, and all control images have one size."""
    for controlnet, node_id, count in zip(control.controlnets, control.nodes, control.counts):
        if controlnet is None:
            continue
        which = f"the ControlNet of '{node_id}' (from '{controlnet.source}')"
        if unet and unet.cross_attention_dim and controlnet.cross_attention_dim not in (None, unet.cross_attention_dim):
            ctx.problem("control", f"{which} attends to {controlnet.cross_attention_dim}-wide text embeddings, but the "
                        f"UNet from '{ctx.source_of('unet')}' to {unet.cross_attention_dim}-wide ones: a ControlNet of "
                        "another model family (SD1 768, SD2 1024, SDXL 2048)")
        if latents.channels and controlnet.in_channels not in (None, latents.channels):
            ctx.problem("control", f"{which} takes {controlnet.in_channels} latent channels, but '"
                        f"{ctx.source_of('latents')}' gives {latents.channels}: a ControlNet of another model family")
        if unet and (controlnet.addition_embed_type == "text_time") != (unet.addition_embed_type == "text_time"):
            kinds = {True: "an SDXL", False: "a non-SDXL"}
            ctx.problem("control", f"{which} is {kinds[controlnet.addition_embed_type == 'text_time']} ControlNet, but "
                        f"the UNet from '{ctx.source_of('unet')}' is {kinds[unet.addition_embed_type == 'text_time']} "
                        "UNet")
        if latents.count and count and count not in (1, latents.count):
            ctx.problem("control", f"'{node_id}' gives {count} control images for {latents.count} images (one per "
                        f"seed of '{ctx.source_of('latents')}'): give one for all, or one per image")
    sizes = {size for size in control.sizes if size is not None}
    if len(sizes) > 1:
        listed = ", ".join(f"'{n}' {s[0]}x{s[1]}" for n, s in zip(control.nodes, control.sizes) if s)
        ctx.problem("control", f"the control images differ in size ({listed}): every one must be the output's size")
    elif sizes and latents.size and sizes != {latents.size}:
        (size,) = sizes
        ctx.problem("control", f"the control image is {size[0]}x{size[1]}, but the latents from "
                    f"'{ctx.source_of('latents')}' make {latents.size[0]}x{latents.size[1]} images: prepare it at the "
                    "output's size (control_image's width and height, or size_of)")


def control_of(control: list[ControlNetCondition], start: int, stop: int, batch: int) -> list[ControlNetCondition]:
    """ControlNet conditions of images ``start:stop``: per-image control images sliced, a shared one kept."""
    return [replace(c, image=rows(c.image, start, stop, batch)) for c in control]


def check_control_size(c: ControlNetCondition, model_input, index: int) -> None:
    """A control image shrunk by the ControlNet's image embedding must come out at the latents' size (validation
    checks the sizes it can see; latents whose size it cannot, e.g. from a latent upscale, are caught here, before the
    ControlNet runs)."""
    channels = c.model.config.conditioning_embedding_out_channels
    factor = 2 ** (len(channels) - 1)
    height, width = model_input.shape[-2] * factor, model_input.shape[-1] * factor
    if tuple(c.image.shape[-2:]) != (height, width):
        raise ValueError(f"ControlNet {index}'s control image is {c.image.shape[-1]}x{c.image.shape[-2]}, but these "
                         f"latents make {width}x{height} images: prepare it at the output's size (control_image's "
                         "width and height, or size_of)")


def control_residuals(control: list[ControlNetCondition], i: int, total: int, model_input, t, text, added_cond,
                      batch: int, halves: int):
    """The ControlNets' summed (down, mid) residuals for step ``i`` of ``total``, as diffusers' ControlNet pipelines
    make them (MultiControlNetModel sums several); (None, None) when none acts at this step.

    A ControlNet acts on the steps inside its [start, end] share of the schedule (diffusers' controlnet_keep). In
    guess mode with CFG it sees only the prompt's half of the batch, and adds nothing to the others.
    """
    import torch

    down = mid = None
    for index, c in enumerate(control):
        if i == 0:
            check_control_size(c, model_input, index)
        keep = 1.0 - float(i / total < c.start or (i + 1) / total > c.end)
        if c.scale * keep == 0.0:
            continue  # (diffusers runs it and adds residuals times 0: the same numbers)
        guess = c.guess_mode or bool(c.model.config.global_pool_conditions)
        image = c.image.expand(batch, -1, -1, -1).to(model_input.device, c.model.dtype)  # one for all, or one each
        sample, hidden, added = model_input, text, added_cond
        if guess and halves > 1:  # the text half alone
            sample, hidden = model_input[batch: 2 * batch], text[batch: 2 * batch]
            added = {k: v[batch: 2 * batch] for k, v in added_cond.items()} if added_cond is not None else None
        else:
            image = torch.cat([image] * halves)
        with torch.no_grad():
            d, m = c.model(sample, t, encoder_hidden_states=hidden, controlnet_cond=image,
                           conditioning_scale=c.scale * keep, guess_mode=guess, added_cond_kwargs=added,
                           return_dict=False)
        if guess and halves > 1:  # zeros for the unconditional half (and any guidance rule's halves after)
            d = [torch.cat([torch.zeros_like(r), r] + [torch.zeros_like(r)] * (halves - 2)) for r in d]
            m = torch.cat([torch.zeros_like(m), m] + [torch.zeros_like(m)] * (halves - 2))
        down = d if down is None else [a + b for a, b in zip(down, d)]
        mid = m if mid is None else mid + m
    return down, mid
