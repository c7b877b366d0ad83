"""latent_upscale: the x2 latent upscaler's sampling loop, as diffusers' StableDiffusionLatentUpscalePipeline runs it.

Read it beside ``StableDiffusionLatentUpscalePipeline.__call__``. It takes denoised latents straight from
a text2img ``denoise`` (nothing is decoded), and differs from the SD loop in four places:
- the prompt is encoded with the hidden states of the text encoder's last layer (before its final layer
  norm) plus its pooled output, which conditions the timestep embedding (``timestep_cond``);
- the low-res latents, upsampled x2 (nearest), are concatenated to the model input at every step;
- the UNet's timestep is log(sigma) / 4 (a k-diffusion model);
- the UNet output is turned into a denoised sample with the c_skip / c_out formula, and the Euler
  scheduler (``prediction_type: sample``) steps with that.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ..engine import Input, Param, RunContext, node
from .denoise import per_batch
from .encode_prompt import encode_distinct
from .types import (SEEDS, LATENTS, SCHEDULER, TEXT_ENCODER, TOKENIZER, UNET, LatentFacts, Latents, broadcast_lists,
                    generators_for, seeds_list)
from .records import LatentUpscale as LatentUpscaleRun

if TYPE_CHECKING:
    import torch

# The pipeline's noise-level embedding: it always conditions on noise level 0 as [ones(64), zeros(64)].
NOISE_LEVEL_EMBED_DIM = 128


def encode_pooled(text_encoder, tokenizer, text: str, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """([1, tokens, dim] last layer's hidden states, [1, dim] pooled output), as the pipeline's encode_prompt."""
    import torch

    ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        out = text_encoder(ids.to(device), output_hidden_states=True)
    return out.hidden_states[-1], out.pooler_output


def check_latent_upscale(params, inputs_meta, ctx):
    unet, encoder = inputs_meta["unet"], inputs_meta["text_encoder"]
    latents = inputs_meta["latents"] or LatentFacts()
    out = {"latents": replace(latents, kind="denoised")}
    if latents.count:
        count = latents.count
        ctx.check_per_image_count(params, count, f"'{ctx.source_of('latents')}' holds {count} "
                                  f"image{'s' if count != 1 else ''}, one per seed")
    if unet is None:
        return out
    if unet.in_channels is not None and unet.time_cond_proj_dim is None:
        ctx.problem("unet", f"the UNet from '{ctx.source_of('unet')}' ({unet.source}) takes no timestep condition, so it is not a "
                    "latent upscaler UNet; point model.latent_upscaler at stabilityai/sd-x2-latent-upscaler "
                    "(or builtin:tiny-latent-upscale)")
        return out
    channels = latents.channels
    if channels and unet.in_channels not in (None, 2 * channels):
        ctx.problem("latents", f"the latent upscaler UNet from '{ctx.source_of('unet')}' takes {unet.in_channels} "
                    f"input channels ({unet.in_channels // 2} latent + as many image channels), but the latents "
                    f"from '{ctx.source_of('latents')}' have {channels} channels: wire latents made with a VAE of "
                    f"{unet.in_channels // 2} latent channels (an SD1/SD2 model for sd-x2-latent-upscaler)")
    hidden = encoder.hidden_size if encoder else None
    if hidden:
        if unet.cross_attention_dim not in (None, hidden):
            ctx.problem("text_encoder", f"the UNet from '{ctx.source_of('unet')}' attends to "
                        f"{unet.cross_attention_dim}-wide text states, but '{ctx.source_of('text_encoder')}' "
                        f"gives {hidden}-wide ones: use the upscaler's own text encoder")
        elif unet.time_cond_proj_dim != NOISE_LEVEL_EMBED_DIM + hidden:
            ctx.problem("unet", f"the UNet from '{ctx.source_of('unet')}' has time_cond_proj_dim "
                        f"{unet.time_cond_proj_dim}, not {NOISE_LEVEL_EMBED_DIM} + {hidden} (noise-level "
                        "embedding + pooled text): it is not a latent upscaler UNet like stabilityai/sd-x2-latent-upscaler")
    return out


@node(
    "latent_upscale",
    "Upscale latents x2 in latent space (as StableDiffusionLatentUpscalePipeline), without decoding them first.",
    inputs={
        "unet": Input(UNET, "the latent upscaler's UNet"),
        "scheduler": Input(SCHEDULER, "the upscaler's Euler scheduler (prediction_type: sample)"),
        "text_encoder": Input(TEXT_ENCODER, "the upscaler's text encoder (hidden states + pooled output)"),
        "tokenizer": Input(TOKENIZER),
        "latents": Input(LATENTS, "low-resolution latents, e.g. a text2img denoise output; their generators draw the noise"),
    },
    outputs={"latents": LATENTS},
    params={
        "prompt": Param(str, doc="what the image shows; guidance 0 replaces it with the empty prompt, as diffusers does",
                        per_image=True, role="prompt"),
        "negative_prompt": Param(str, "", doc="the unconditional half of CFG", per_image=True, role="prompt"),
        "steps": Param(int, 75, min=1, max=1000, doc="Euler steps"),
        "guidance": Param(float, 9.0, min=0.0, max=100.0, doc="classifier-free guidance scale; <= 1 turns CFG off"),
        "seed": Param(SEEDS, None, nullable=True, per_image=True,
                      doc="the seed of each image's upscaler noise; null or the image's own seed continues that "
                          "image's generator (diffusers' documented chain passes one generator to both pipelines), "
                          "another seed starts a fresh one"),
    },
    check=check_latent_upscale,
)
def latent_upscale(ctx: RunContext, unet, scheduler, text_encoder, tokenizer, latents: Latents, prompt: str | list[str],
                   negative_prompt: str | list[str], steps: int, guidance: float, seed: int | list[int] | None = None):
    import torch
    import torch.nn.functional as F
    from diffusers.utils.torch_utils import randn_tensor

    scheduler = type(scheduler).from_config(scheduler.config)  # fresh state: schedulers count their steps
    batch = latents.samples.shape[0]
    do_cfg = guidance > 1.0
    texts = broadcast_lists(prompt="" if guidance == 0 else prompt,  # the pipeline drops the prompt at guidance 0
                            negative_prompt=negative_prompt)
    count = len(texts["prompt"])
    encoded, _ = encode_distinct(texts["prompt"] + (texts["negative_prompt"] if do_cfg else []),
                                 lambda text: encode_pooled(text_encoder, tokenizer, text, ctx.device))
    text = per_batch(torch.cat([hidden for hidden, _ in encoded[:count]]), batch, "prompts")
    pooled = per_batch(torch.cat([p for _, p in encoded[:count]]), batch, "prompts")
    if do_cfg:
        text = torch.cat([per_batch(torch.cat([hidden for hidden, _ in encoded[count:]]), batch, "negative prompts"), text])
        pooled = torch.cat([per_batch(torch.cat([p for _, p in encoded[count:]]), batch, "negative prompts"), pooled])
    dtype = text.dtype

    image = latents.samples.to(device=ctx.device, dtype=dtype)
    image = torch.cat([image] * (2 if do_cfg else 1))
    # Noise level 0: inv_noise_level = (0**2 + 1) ** -0.5 = 1, kept for the pipeline's formula.
    noise_level = torch.zeros(image.shape[0], dtype=torch.float32, device=ctx.device)
    inv_noise_level = (noise_level**2 + 1) ** (-0.5)
    image_cond = (F.interpolate(image, scale_factor=2, mode="nearest") * inv_noise_level[:, None, None, None]).to(dtype)
    noise_level_embed = torch.cat([torch.ones(pooled.shape[0], NOISE_LEVEL_EMBED_DIM // 2, dtype=dtype, device=ctx.device),
                                   torch.zeros(pooled.shape[0], NOISE_LEVEL_EMBED_DIM // 2, dtype=dtype, device=ctx.device)],
                                  dim=1)
    timestep_condition = torch.cat([noise_level_embed, pooled], dim=1)

    scheduler.set_timesteps(steps, device=ctx.device)
    timesteps = scheduler.timesteps
    # Starting noise at twice the size, from each image's own generator (after what text2img drew from it),
    # or from a fresh one where this stage has a seed of its own.
    generators = stage_generators(latents, seed)
    channels, height, width = latents.samples.shape[1:]
    x = randn_tensor((batch, channels, height * 2, width * 2), generator=generators, device=ctx.device, dtype=dtype)
    x = x * scheduler.init_noise_sigma

    for i, t in enumerate(ctx.steps(timesteps, total=len(timesteps), desc=f"{ctx.node_id} (latent x2)")):
        sigma = scheduler.sigmas[i]
        model_input = torch.cat([x] * 2) if do_cfg else x
        scaled_input = torch.cat([scheduler.scale_model_input(model_input, t), image_cond], dim=1)
        timestep = torch.log(sigma) * 0.25
        with torch.no_grad():
            prediction = unet(scaled_input, timestep, encoder_hidden_states=text, timestep_cond=timestep_condition,
                              return_dict=False)[0]
        prediction = prediction[:, :-1]  # the last channel is the model's variance estimate, unused
        # Denoised sample = c_skip * input + c_out * output, with c_skip = 1/(sigma^2+1) and
        # c_out = sigma/sqrt(sigma^2+1) (what scale_model_input computes for the sample `sigma`).
        inv_sigma = 1 / (sigma**2 + 1)
        denoised = inv_sigma * model_input + scheduler.scale_model_input(sigma, t) * prediction
        if do_cfg:
            uncond, cond = denoised.chunk(2)
            denoised = uncond + guidance * (cond - uncond)
        # No generator: diffusers passes none here (Euler draws noise only when s_churn > 0).
        x = scheduler.step(denoised, t, x, return_dict=False)[0]

    ctx.record.note(ctx.node_id, LatentUpscaleRun(steps, guidance, prompt, negative_prompt,
                                                  seeds_list(seed, batch) if seed is not None else None))
    return {"latents": Latents(x, latents.seeds, generators, "denoised", latents.scaling_factor)}


def stage_generators(latents: Latents, seed: int | list[int] | None) -> list:
    """Each image's generator for a later stage: its own, continued (no seed, or the image's own seed), or a fresh
    one from the stage's seed (an int: seed, seed+1, ... as for the images; a list: one per image)."""
    if seed is None:
        return list(latents.generators)
    seeds = seeds_list(seed, len(latents.seeds))
    if len(seeds) != len(latents.seeds):
        raise ValueError(f"{len(seeds)} seeds for {len(latents.seeds)} images: give one int, or a list of one per image")
    return [generator if s == own else generators_for([s], "cpu")[0]
            for s, own, generator in zip(seeds, latents.seeds, latents.generators)]
