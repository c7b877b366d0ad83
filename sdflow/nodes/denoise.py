"""denoise: the sampling loop of diffusers' Stable Diffusion pipelines, as one node.

Read it beside ``StableDiffusionPipeline.__call__``: set timesteps (cut by img2img strength), start
from noise or from noised image latents, then per step scale the input, predict noise for both CFG
halves in one batch, combine, and let the scheduler step.

Prompts and guidance may differ per image: embeddings hold one row for all images or one per image,
and ``guidance`` may be a list. An image whose guidance is <= 1 gets the text prediction alone, as
diffusers gives it with CFG off, even when others in its batch use CFG.

ControlNets (the ``control`` input) add their residuals to the UNet's call, as diffusers' ControlNet pipelines do
(control_residuals.py).

Out of GPU memory, a batch runs again as two halves (``sample_in_halves``), with the same pixels.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import replace

from ..engine import Input, Param, RunContext, node
from .memory import free_memory, is_out_of_memory, record_fallback, rows
from .control_residuals import check_control, control_of, control_residuals
from .types import (CONDITION, CONTROL, EMBEDDINGS, GUIDANCE, LATENTS, SCHEDULER, UNET, Condition, ConditionFacts,
                    ControlNetCondition, EmbeddingFacts, Embeddings, GuidanceFacts, GuidanceRule, LatentFacts, Latents)
from .records import Denoising


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


def split_point(value: float | None) -> float | None:
    """denoising_start/end count only strictly between 0 and 1, as in diffusers' SDXL pipelines."""
    return value if value is not None and 0.0 < value < 1.0 else None


def timestep_cutoff(scheduler, fraction: float) -> int:
    """The training timestep reached once ``fraction`` of the denoising is done (the SDXL base/refiner split)."""
    train = scheduler.config.num_train_timesteps
    return int(round(train - fraction * train))


def start_timesteps(scheduler, denoising_start: float):
    """The timesteps below the cutoff, as StableDiffusionXLImg2ImgPipeline.get_timesteps keeps them."""
    kept = int((scheduler.timesteps < timestep_cutoff(scheduler, denoising_start)).sum().item())
    if scheduler.order == 2 and kept % 2 == 0:
        kept += 1  # a 2nd-order scheduler must not start between its two evaluations of one step
    t_start = len(scheduler.timesteps) - kept
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start)
    return scheduler.timesteps[t_start:]


def added_conditioning(embeddings: Embeddings, condition: Condition | None, batch: int, do_cfg: bool) -> dict | None:
    """SDXL's added_cond_kwargs: pooled text embeddings and time ids, [uncond, cond] halves like the prompt's."""
    import torch

    time_ids = condition.time_ids if condition is not None else None
    if embeddings.positive_pooled is None and time_ids is None:
        return None
    text_embeds, ids = embeddings.positive_pooled.expand(batch, -1), time_ids.expand(batch, -1)
    if do_cfg:
        negative_ids = condition.negative_time_ids if condition.negative_time_ids is not None else time_ids
        text_embeds = torch.cat([embeddings.negative_pooled.expand(batch, -1), text_embeds])
        ids = torch.cat([negative_ids.expand(batch, -1), ids])
    return {"text_embeds": text_embeds, "time_ids": ids}


def guidance_scales(guidance: float | list[float], batch: int, dtype, device):
    """(scale, any_cfg, cfg_off): the CFG scale, one float or per-image scales as an [N, 1, 1, 1] tensor;
    whether any image uses CFG (if none, the unconditional half is skipped); and, when only some do, an
    [N, 1, 1, 1] bool tensor of the images whose guidance <= 1 turns CFG off (else None)."""
    import torch

    scales = guidance if isinstance(guidance, list) else [guidance]
    if len(scales) not in (1, batch):
        raise ValueError(f"{len(scales)} guidance values for {batch} images: give one for all, or one per image")
    on = [g > 1.0 for g in scales]
    if len(set(scales)) == 1:
        return scales[0], on[0], None  # one scale for all: exactly the single-image arithmetic
    scale = torch.tensor(scales, dtype=dtype, device=device).view(-1, 1, 1, 1)
    cfg_off = None if all(on) else torch.tensor([not o for o in on], device=device).view(-1, 1, 1, 1)
    return scale, any(on), cfg_off


def step_kwargs(scheduler, generators, eta: float) -> dict:
    """Pass eta and the per-image generators only to schedulers whose step() takes them."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generators
    return kwargs


def per_batch(rows, batch: int, what: str):
    """[K, ...] rows for a batch of ``batch`` images: one row is shared (a view), K == batch is used as is."""
    if rows.shape[0] not in (1, batch):
        raise ValueError(f"{rows.shape[0]} {what} for {batch} images: give one for all, or one per image")
    return rows.expand(batch, *rows.shape[1:])


def check_image_counts(params, embeddings: EmbeddingFacts, latents: LatentFacts, ctx) -> None:
    """Per-image lists (prompts in the embeddings, this node's guidance) must have one value per image, or one."""
    count = latents.count
    if not count:
        return
    why = f"'{ctx.source_of('latents')}' holds {count} image{'s' if count != 1 else ''}, one per seed"
    if embeddings.count not in (1, count) and embeddings.count_field:  # reported where the list was given
        ctx.count_problem(embeddings.count_field, count, embeddings.count, why,
                          node=ctx.source_of("embeddings").split(".")[0])
    ctx.check_per_image_count(params, count, why)


def check_denoise(params, inputs_meta, ctx):
    unet = inputs_meta["unet"]
    embeddings = inputs_meta["embeddings"] or EmbeddingFacts()
    latents = inputs_meta["latents"] or LatentFacts()
    condition = inputs_meta["condition"] or ConditionFacts()
    rule = inputs_meta["guidance_rule"] or GuidanceFacts()
    check_image_counts(params, embeddings, latents, ctx)
    if inputs_meta["control"] is not None:
        check_control(inputs_meta["control"], unet, latents, ctx)
    width = unet.cross_attention_dim if unet else None
    if width is not None and embeddings.dim and width != embeddings.dim:
        ctx.problem("embeddings", f"the UNet from '{ctx.source_of('unet')}' attends to {width}-wide "
                    f"text embeddings, but '{ctx.source_of('embeddings')}' gives {embeddings.dim}-wide ones "
                    "(text encoder and UNet come from different model families)")
    if width is not None and rule.dim and width != rule.dim:
        ctx.problem("guidance_rule", f"the UNet from '{ctx.source_of('unet')}' attends to {width}-wide embeddings, but "
                    f"'{ctx.source_of('guidance_rule')}' encodes its concept {rule.dim}-wide (use the prompt's text encoder)")
    if unet and unet.in_channels is not None and latents.channels:
        extra = condition.channels
        if unet.in_channels != latents.channels + extra:
            what = f"{latents.channels} latent channels" + (f" + {extra} condition channels" if extra else "")
            ctx.problem("latents", f"the UNet from '{ctx.source_of('unet')}' takes {unet.in_channels} input channels, "
                        f"but this step gives it {what} (from '{ctx.source_of('latents')}'"
                        + (f" and '{ctx.source_of('condition')}')" if extra else ")")
                        + (f"; {condition.hint}" if condition.hint else ""))
    if latents.strength is not None and latents.strength != params["strength"]:
        ctx.problem("strength", f"'{ctx.source_of('latents')}' prepared its latents for strength {latents.strength}, "
                    f"but this step runs strength {params['strength']}; give both the same strength")
    if latents.kind == "noise" and params["strength"] < 1.0:
        ctx.problem("strength", f"strength {params['strength']} needs image latents (encode_image) to start from, but "
                    f"'{ctx.source_of('latents')}' is pure noise; use strength 1.0 or wire encoded image latents")
    if latents.kind != "noise" and int(params["steps"] * params["strength"]) < 1:
        ctx.problem("strength", f"strength {params['strength']} x {params['steps']} steps leaves no step to run; "
                    "raise strength or steps")
    start, end = split_point(params["denoising_start"]), split_point(params["denoising_end"])
    if start is not None and latents.kind == "noise":
        ctx.problem("denoising_start", f"denoising_start {start} continues partly denoised latents (a denoise with "
                    f"denoising_end), but '{ctx.source_of('latents')}' is pure noise")
    if start is not None and end is not None and start >= end:
        ctx.problem("denoising_end", f"denoising_start {start} must be below denoising_end {end}")
    if unet and unet.addition_embed_type == "text_time":
        lacking = ([] if embeddings.pooled_dim else [f"pooled text embeddings ('{ctx.source_of('embeddings')}' "
                                                     "has none: use encode_prompt_sdxl)"])
        lacking += [] if condition.time_ids else ["size/crop time ids (wire an sdxl_condition node as 'condition')"]
        if lacking:
            ctx.problem("unet", f"the UNet from '{ctx.source_of('unet')}' is an SDXL UNet (addition_embed_type "
                        f"'text_time') and needs {' and '.join(lacking)}")
    return {"latents": replace(latents, kind="denoised")}


@node(
    "denoise",
    "Run the diffusion sampling loop: classifier-free guidance, any diffusers scheduler, img2img strength.",
    inputs={
        "unet": Input(UNET),
        "scheduler": Input(SCHEDULER),
        "embeddings": Input(EMBEDDINGS),
        "latents": Input(LATENTS, "starting noise (text2img) or encoded image latents (img2img)"),
        "condition": Input(CONDITION, "channels concatenated to the latents and class labels", optional=True),
        "guidance_rule": Input(GUIDANCE, "combines the predictions in place of plain CFG (e.g. safe latent diffusion)",
                               optional=True),
        "control": Input(CONTROL, "ControlNet conditions: their residuals are added to the UNet's", optional=True),
    },
    outputs={"latents": LATENTS},
    params={
        "steps": Param(int, 30, min=1, max=1000, doc="scheduler steps for the full schedule"),
        "guidance": Param(float, 7.5, min=0.0, max=100.0, doc="classifier-free guidance scale; <= 1 turns CFG off",
                          per_image=True),
        "strength": Param(float, 1.0, min=0.0, max=1.0, doc="img2img: how much of the schedule to run on the image"),
        "eta": Param(float, 0.0, min=0.0, max=1.0, doc="DDIM eta (ignored by schedulers without it)"),
        "guidance_rescale": Param(float, 0.0, min=0.0, max=1.0, doc="rescale guided noise (fixes overexposure)"),
        "denoising_start": Param(float, None, nullable=True, min=0.0, max=1.0,
                                 doc="SDXL refiner: continue from this share of the schedule, adding no noise"),
        "denoising_end": Param(float, None, nullable=True, min=0.0, max=1.0,
                               doc="SDXL base: stop at this share of the schedule (hand the latents to a refiner)"),
    },
    check=check_denoise,
)
def denoise(ctx: RunContext, unet, scheduler, embeddings: Embeddings, latents: Latents, condition: Condition | None,
            guidance_rule: GuidanceRule | None,
            steps: int, guidance: float | list[float], strength: float, eta: float, guidance_rescale: float,
            denoising_start: float | None = None, denoising_end: float | None = None,
            control: list[ControlNetCondition] | None = None):
    settings = {"steps": steps, "strength": strength, "eta": eta, "guidance_rescale": guidance_rescale,
                "denoising_start": denoising_start, "denoising_end": denoising_end, "control": control or []}
    with sliced_attention(ctx, unet):
        x = sample_in_halves(ctx, unet, scheduler, embeddings, latents, condition, guidance_rule, guidance, settings)
    return {"latents": Latents(x, latents.seeds, latents.generators, "denoised", latents.scaling_factor)}


@contextlib.contextmanager
def sliced_attention(ctx: RunContext, unet):
    """The cached UNet with runtime.attention_slicing for this node, as diffusers' enable_attention_slicing sets it
    (SlicedAttnProcessor: the heads a slice at a time, less peak memory, the same result), and its own attention
    processors (an IP-Adapter's included) put back after: the UNet is shared with other runs."""
    if ctx.attention_slicing is None:
        yield
        return
    kept = unet.attn_processors
    unet.set_attention_slice(ctx.attention_slicing)
    try:
        yield
    finally:
        unet.set_attn_processor(kept)


def sample_in_halves(ctx: RunContext, unet, scheduler, embeddings: Embeddings, latents: Latents,
                     condition: Condition | None, guidance_rule: GuidanceRule | None, guidance, settings: dict):
    """sample(); if the GPU runs out of memory, the batch again as two halves (recursively, down to one image).

    Each image keeps its own generator, wound back to where it stood before the failed try, so the halves
    make the very pixels the whole batch would have.
    """
    import torch

    batch = latents.samples.shape[0]
    states = [generator.get_state() for generator in latents.generators]
    try:
        return sample(ctx, unet, scheduler, embeddings, latents, condition, guidance_rule, guidance, **settings)
    except Exception as exc:  # noqa: BLE001 (every form of out of memory; anything else goes on up)
        if batch == 1 or not is_out_of_memory(exc):
            raise
    # (retried out of the except block, so the failed try's tensors are already released)
    for generator, state in zip(latents.generators, states):
        generator.set_state(state)
    free_memory()
    half = batch // 2
    record_fallback(ctx, "batch_split", f"out of memory denoising {batch} images at once; ran them as {half} + {batch - half}")
    parts = []
    for start, stop in ((0, half), (half, batch)):
        part_embeddings, part_latents, part_condition, part_guidance = images_of(embeddings, latents, condition,
                                                                                 guidance, start, stop)
        part_settings = {**settings, "control": control_of(settings["control"], start, stop, batch)}
        parts.append(sample_in_halves(ctx, unet, scheduler, part_embeddings, part_latents, part_condition, guidance_rule,
                                      part_guidance, part_settings))
    return torch.cat(parts)


def images_of(embeddings: Embeddings, latents: Latents, condition: Condition | None, guidance, start: int, stop: int):
    """(embeddings, latents, condition, guidance) of images ``start:stop``: per-image rows sliced, shared ones kept."""
    batch = latents.samples.shape[0]
    embeddings = replace(embeddings, **{name: rows(getattr(embeddings, name), start, stop, batch) for name in
                                        ("positive", "negative", "positive_pooled", "negative_pooled")})
    latents = replace(latents, samples=latents.samples[start:stop], seeds=latents.seeds[start:stop],
                      generators=latents.generators[start:stop], noise=rows(latents.noise, start, stop, batch))
    if condition is not None:
        blend = condition.blend
        if blend is not None:
            blend = replace(blend, mask=rows(blend.mask, start, stop, batch),
                            image_latents=rows(blend.image_latents, start, stop, batch),
                            noise=rows(blend.noise, start, stop, batch))
        condition = replace(condition, concat=rows(condition.concat, start, stop, batch),
                            class_labels=rows(condition.class_labels, start, stop, batch), blend=blend,
                            time_ids=rows(condition.time_ids, start, stop, batch),
                            negative_time_ids=rows(condition.negative_time_ids, start, stop, batch))
    if isinstance(guidance, list) and len(guidance) == batch:
        guidance = guidance[start:stop]
    return embeddings, latents, condition, guidance


def sample(ctx: RunContext, unet, scheduler, embeddings: Embeddings, latents: Latents, condition: Condition | None,
           guidance_rule: GuidanceRule | None, guidance: float | list[float], steps: int, strength: float, eta: float,
           guidance_rescale: float, denoising_start: float | None, denoising_end: float | None,
           control: list[ControlNetCondition]):
    """The sampling loop over one batch; returns the denoised latents."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    scheduler = type(scheduler).from_config(scheduler.config)  # fresh state: schedulers count their steps
    batch = latents.samples.shape[0]
    scale, any_cfg, cfg_off = guidance_scales(guidance, batch, unet.dtype, ctx.device)
    do_cfg = any_cfg and unet.config.time_cond_proj_dim is None
    text = per_batch(embeddings.positive, batch, "prompt embeddings")
    if do_cfg:
        text = torch.cat([per_batch(embeddings.negative, batch, "negative prompt embeddings"), text])
    added_cond = added_conditioning(embeddings, condition, batch, do_cfg)
    # A guidance rule may add conditionings (batched after [uncond, text]) and combines the predictions;
    # start() gives it fresh state (e.g. momentum) for this run.
    extra = list(guidance_rule.extra_embeddings) if do_cfg and guidance_rule is not None else []
    if extra:
        text = torch.cat([text] + [e.expand(batch, -1, -1) for e in extra])
    combine = guidance_rule.start() if do_cfg and guidance_rule is not None else None

    scheduler.set_timesteps(steps, device=ctx.device)
    if split_point(denoising_start) is not None:  # SDXL refiner: continue the base's latents, no new noise
        timesteps = start_timesteps(scheduler, denoising_start)
        x = latents.samples.to(ctx.device)
    elif latents.kind == "noise":
        timesteps = scheduler.timesteps
        x = latents.samples.to(ctx.device) * scheduler.init_noise_sigma
    else:
        timesteps = img2img_timesteps(scheduler, steps, strength)
        if latents.noise is not None:  # drawn ahead by the node that made the latents (inpainting)
            noise = latents.noise.to(ctx.device)
        else:
            noise = randn_tensor(latents.samples.shape, generator=latents.generators, device=ctx.device,
                                 dtype=latents.samples.dtype)
        x = scheduler.add_noise(latents.samples.to(ctx.device), noise, timesteps[:1].repeat(batch))
    if split_point(denoising_end) is not None:  # SDXL base: stop early and hand the latents on
        cutoff = timestep_cutoff(scheduler, denoising_end)
        timesteps = timesteps[: len([t for t in timesteps if t >= cutoff])]

    concat = class_labels = None
    if condition is not None:
        halves = 2 + len(extra) if do_cfg else 1
        if condition.concat is not None:
            concat = torch.cat([condition.concat.to(x.dtype)] * halves)
        if condition.class_labels is not None:
            class_labels = torch.cat([condition.class_labels] * halves)
    extra_step = step_kwargs(scheduler, latents.generators, eta)

    blend = condition.blend if condition is not None else None
    for i, t in enumerate(ctx.steps(timesteps, total=len(timesteps), desc=f"{ctx.node_id} ({type(scheduler).__name__})")):
        model_input = torch.cat([x] * (2 + len(extra))) if do_cfg else x
        model_input = scheduler.scale_model_input(model_input, t)
        down, mid = control_residuals(control, i, len(timesteps), model_input, t, text, added_cond, batch,
                                      2 + len(extra) if do_cfg else 1)
        if concat is not None:
            model_input = torch.cat([model_input, concat], dim=1)
        with torch.no_grad():
            noise_pred = unet(model_input, t, encoder_hidden_states=text, class_labels=class_labels,
                              added_cond_kwargs=added_cond, down_block_additional_residuals=down,
                              mid_block_additional_residual=mid, return_dict=False)[0]
        if do_cfg:
            noise_uncond, noise_text, *noise_extra = noise_pred.chunk(2 + len(extra))
            if combine is None:
                noise_pred = noise_uncond + scale * (noise_text - noise_uncond)
            else:
                noise_pred = combine(i, noise_uncond, noise_text, noise_extra, scale)
            if guidance_rescale > 0.0:
                noise_pred = rescale_noise_cfg(noise_pred, noise_text, guidance_rescale)
            if cfg_off is not None:  # images with CFG off: the text prediction alone, as made on their own
                noise_pred = torch.where(cfg_off, noise_text, noise_pred)
        x = scheduler.step(noise_pred, t, x, **extra_step, return_dict=False)[0]
        if blend is not None:  # legacy inpainting: outside the mask, the image noised to the next timestep
            keep = blend.image_latents
            if i < len(timesteps) - 1:
                keep = scheduler.add_noise(keep, blend.noise, timesteps[i + 1 : i + 2])
            x = (1 - blend.mask) * keep + blend.mask * x
        if ctx.on_step is not None:  # a caller's hook: progress, step previews
            ctx.on_step(ctx.node_id, i, len(timesteps), x)

    ctx.record.note(ctx.node_id, Denoising(type(scheduler).__name__, steps, len(timesteps), guidance, strength,
                                           denoising_start, denoising_end))
    return x
