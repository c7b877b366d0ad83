"""denoise: the sampling loop of diffusers' Stable Diffusion pipelines, as one node.

Read it beside ``StableDiffusionPipeline.__call__``: set timesteps (cut by img2img strength), start
from noise or from noised image latents, then per step scale the input, predict noise for both CFG
halves in one batch, combine, and let the scheduler step.
"""

from __future__ import annotations

import inspect

import torch
from diffusers.utils.torch_utils import randn_tensor

from ..engine import Input, Param, RunContext, node
from .types import CONDITION, EMBEDDINGS, LATENTS, SCHEDULER, UNET, Condition, Embeddings, Latents


def rescale_noise_cfg(noise_cfg, noise_pred_text, guidance_rescale: float):
    """Rescale guided noise toward the text prediction's std (Lin et al. 2023, sec. 3.4), as diffusers does."""
    dims = list(range(1, noise_pred_text.ndim))
    std_text = noise_pred_text.std(dim=dims, keepdim=True)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


def img2img_timesteps(scheduler, steps: int, strength: float):
    """Skip the first (1 - strength) of the schedule; diffusers rounds the kept steps down."""
    init_timestep = min(int(steps * strength), steps)
    t_start = max(steps - init_timestep, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps


def step_kwargs(scheduler, generators, eta: float) -> dict:
    """Pass eta and the per-image generators only to schedulers whose step() takes them."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generators
    return kwargs


def check_denoise(params, inputs_meta, ctx):
    unet = inputs_meta.get("unet") or {}
    embeddings = inputs_meta.get("embeddings") or {}
    latents = inputs_meta.get("latents") or {}
    condition = inputs_meta.get("condition") or {}
    if unet and embeddings.get("dim") and unet.get("cross_attention_dim") not in (None, embeddings["dim"]):
        ctx.problem("embeddings", f"the UNet from '{ctx.source_of('unet')}' attends to {unet['cross_attention_dim']}-wide "
                    f"text embeddings, but '{ctx.source_of('embeddings')}' gives {embeddings['dim']}-wide ones "
                    "(text encoder and UNet come from different model families)")
    if unet and latents.get("channels"):
        extra = condition.get("channels", 0) if condition else 0
        if unet.get("in_channels") not in (None, latents["channels"] + extra):
            what = f"{latents['channels']} latent channels" + (f" + {extra} condition channels" if extra else "")
            ctx.problem("latents", f"the UNet from '{ctx.source_of('unet')}' takes {unet['in_channels']} input channels, "
                        f"but this step gives it {what} (from '{ctx.source_of('latents')}'"
                        + (f" and '{ctx.source_of('condition')}')" if extra else ")"))
    if latents.get("kind") == "noise" and params["strength"] < 1.0:
        ctx.problem("strength", f"strength {params['strength']} needs image latents (encode_image) to start from, but "
                    f"'{ctx.source_of('latents')}' is pure noise; use strength 1.0 or wire encoded image latents")
    if latents.get("kind") != "noise" and int(params["steps"] * params["strength"]) < 1:
        ctx.problem("strength", f"strength {params['strength']} x {params['steps']} steps leaves no step to run; "
                    "raise strength or steps")
    return {"latents": {**latents, "kind": "denoised"}}


@node(
    "denoise",
    "Run the diffusion sampling loop: classifier-free guidance, any diffusers scheduler, img2img strength.",
    inputs={
        "unet": Input(UNET),
        "scheduler": Input(SCHEDULER),
        "embeddings": Input(EMBEDDINGS),
        "latents": Input(LATENTS, "starting noise (text2img) or encoded image latents (img2img)"),
        "condition": Input(CONDITION, "channels concatenated to the latents and class labels", optional=True),
    },
    outputs={"latents": LATENTS},
    params={
        "steps": Param(int, 30, min=1, max=1000, doc="scheduler steps for the full schedule"),
        "guidance": Param(float, 7.5, min=0.0, max=100.0, doc="classifier-free guidance scale; <= 1 turns CFG off"),
        "strength": Param(float, 1.0, min=0.0, max=1.0, doc="img2img: how much of the schedule to run on the image"),
        "eta": Param(float, 0.0, min=0.0, max=1.0, doc="DDIM eta (ignored by schedulers without it)"),
        "guidance_rescale": Param(float, 0.0, min=0.0, max=1.0, doc="rescale guided noise (fixes overexposure)"),
    },
    check=check_denoise,
)
def denoise(ctx: RunContext, unet, scheduler, embeddings: Embeddings, latents: Latents, condition: Condition | None,
            steps: int, guidance: float, strength: float, eta: float, guidance_rescale: float):
    scheduler = type(scheduler).from_config(scheduler.config)  # fresh state: schedulers count their steps
    batch = latents.samples.shape[0]
    do_cfg = guidance > 1.0 and unet.config.time_cond_proj_dim is None
    text = embeddings.positive.expand(batch, -1, -1)
    if do_cfg:
        text = torch.cat([embeddings.negative.expand(batch, -1, -1), text])

    scheduler.set_timesteps(steps, device=ctx.device)
    if latents.kind == "noise":
        timesteps = scheduler.timesteps
        x = latents.samples.to(ctx.device) * scheduler.init_noise_sigma
    else:
        timesteps = img2img_timesteps(scheduler, steps, strength)
        noise = randn_tensor(latents.samples.shape, generator=latents.generators, device=ctx.device,
                             dtype=latents.samples.dtype)
        x = scheduler.add_noise(latents.samples.to(ctx.device), noise, timesteps[:1].repeat(batch))

    concat = class_labels = None
    if condition is not None:
        halves = 2 if do_cfg else 1
        if condition.concat is not None:
            concat = torch.cat([condition.concat.to(x.dtype)] * halves)
        if condition.class_labels is not None:
            class_labels = torch.cat([condition.class_labels] * halves)
    extra_step = step_kwargs(scheduler, latents.generators, eta)

    for t in ctx.steps(timesteps, total=len(timesteps), desc=f"{ctx.node_id} ({type(scheduler).__name__})"):
        model_input = torch.cat([x] * 2) if do_cfg else x
        model_input = scheduler.scale_model_input(model_input, t)
        if concat is not None:
            model_input = torch.cat([model_input, concat], dim=1)
        with torch.no_grad():
            noise_pred = unet(model_input, t, encoder_hidden_states=text, class_labels=class_labels,
                              return_dict=False)[0]
        if do_cfg:
            noise_uncond, noise_text = noise_pred.chunk(2)
            noise_pred = noise_uncond + guidance * (noise_text - noise_uncond)
            if guidance_rescale > 0.0:
                noise_pred = rescale_noise_cfg(noise_pred, noise_text, guidance_rescale)
        x = scheduler.step(noise_pred, t, x, **extra_step, return_dict=False)[0]

    ctx.record.setdefault("denoise", {})[ctx.node_id] = {
        "scheduler": type(scheduler).__name__, "steps": steps, "steps_run": len(timesteps), "guidance": guidance,
        "strength": strength}
    return {"latents": Latents(x, latents.seeds, latents.generators, "denoised", latents.scaling_factor)}
