"""Train sdflow's offline default models "shapes" (64 px text-to-image) and "shapes-x4" (x4 upscaler).

Everything is rendered by sdflow.world (no data set, no download). Four phases, each seeded on its own
(so they can run in one process or one at a time, in parallel where they do not depend on each other)
and each bounded by a wall-time budget or by an exact step count (to replay a run):
1. text: the CLIP text encoder learns to read captions. Linear heads must recover all five
   attributes (shape, colour, size, position, background) from every position at or after the EOS
   token, the positions the UNet's cross-attention sees on every prompt. A frozen random encoder
   left "red circle, blue background" and "blue circle, red background" nearly alike, and the UNet
   swapped colours; this one is then frozen for the other phases.
2. vae: 64x64x3 <-> 16x16x4, no attention, on world images at 64 px and 64 px crops of 256 px
   renders, so the same fully convolutional VAE serves the upscaler at 256 px. Its scaling factor
   (1 / std of the latent means) is measured here.
3. unet (needs text, vae): base UNet on precomputed latents (posterior means) and precomputed caption
   embeddings; 10% empty captions for classifier-free guidance; min-SNR loss weighting and an EMA of
   the weights, both of which help most in short runs.
4. up (needs vae): the VAE fine-tuned on whole 256 px renders (a fixed 500 steps), then the
   upscaler UNet (in_channels 7, noise level as class label) on latent crops of 256 px renders
   paired with their 64 px versions.
Each phase writes its fp16 diffusers folder(s) under --out (the next phase reads them back, so it
trains on exactly the weights that ship). Steps actually run go to train/last_run.json; pass them
back with --steps to replay a phase.

Usage (the committed weights; text and vae ran side by side, one thread each, then unet, then up):
    python train/train_shapes.py --phases text --minutes 3 &
    python train/train_shapes.py --phases vae --minutes 25
    python train/train_shapes.py --phases unet --minutes 55 --threads 2
    python train/train_shapes.py --phases up --minutes 25
Replay exactly: python train/train_shapes.py --steps T,V,U,X  (the steps in train/last_run.json)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, StableDiffusionUpscalePipeline  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

from sdflow.world.captions import TEMPLATES, caption, held_out_scenes, training_scenes  # noqa: E402
from sdflow.world.render import render  # noqa: E402
from sdflow.world.tokenizer import write_world_tokenizer  # noqa: E402
from sdflow.world.vocabulary import COLOURS, POSITIONS, SHAPES, SIZES  # noqa: E402
from shapes_models import TEXT_HIDDEN, make_text_encoder, make_unet, make_upscaler_unet, make_vae  # noqa: E402

PHASES = ("text", "vae", "unet", "up")
# What the text encoder's heads must read back from a caption, in this order.
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES, "colour": tuple(COLOURS), "size": SIZES, "position": POSITIONS, "background": tuple(COLOURS),
}

UPSCALER_SCALING = 0.08333  # StableDiffusionUpscalePipeline forces this VAE scaling factor.

# Hand-written like published checkpoints' configs: from_config/save_pretrained would drop or add
# defaults. Linear betas beat scaled_linear in the GPU calibration run.
BASE_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "_diffusers_version": "0.42.1",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "trained_betas": None,
    "timestep_spacing": "leading",
}
# The upscaler predicts the clean latents ("sample"): the low-res image nearly determines them, so
# this is the easiest target for a short run.
UPSCALER_SCHEDULER = dict(BASE_SCHEDULER, prediction_type="sample")
LOW_RES_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "_diffusers_version": "0.42.1",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "trained_betas": None,
    "variance_type": "fixed_small",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float in [-1, 1], the range diffusers' VAEs use."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0


def lr_at(step_frac: float, warm: float, base: float) -> float:
    """Linear warm-up then cosine decay to 10%, over the fraction of the phase done (time or steps)."""
    if step_frac < warm:
        return base * step_frac / warm
    t = (step_frac - warm) / max(1e-8, 1 - warm)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


class Phase:
    """Bounds a training loop by wall time or by an exact number of steps."""

    def __init__(self, minutes: float, steps: int | None):
        self.budget, self.steps, self.start = minutes * 60.0, steps, time.time()

    def frac(self, step: int) -> float:
        if self.steps:
            return step / self.steps
        return (time.time() - self.start) / self.budget

    def done(self, step: int) -> bool:
        return self.frac(step) >= 1.0


def optimizer_step(opt, loss, clip_params=None) -> None:
    """One AdamW step; gradients of ``clip_params`` (if given) clipped to norm 1 first."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip_params is not None:
        torch.nn.utils.clip_grad_norm_(clip_params, 1.0)
    opt.step()


def vae_loss(vae, x: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 + MSE reconstruction of a posterior sample, plus the KL per latent element (also returned)."""
    post = vae.encode(x).latent_dist
    rec = vae.decode(post.sample()).sample
    kl = post.kl().mean() / post.mean[0].numel()
    return F.l1_loss(rec, x) + F.mse_loss(rec, x) + kl_weight * kl, kl


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float = 0.999) -> None:
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - d)


def min_snr_weight(scheduler: DDPMScheduler, t: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    ac = scheduler.alphas_cumprod[t]
    snr = ac / (1 - ac)
    return torch.clamp(snr, max=gamma) / snr


def seed_phase(seed: int, phase: str) -> random.Random:
    """Seed torch for ``phase`` and return its own Python RNG: phases do not share random state,
    so running them together or one at a time gives the same weights."""
    torch.manual_seed(seed * 100 + PHASES.index(phase))
    return random.Random(f"{seed}-{phase}")


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


# ---------------------------------------------------------------- phase 1: text encoder
def caption_labels(scenes, n_templates: int) -> tuple[list[str], torch.Tensor]:
    captions, labels = [], []
    for sc in scenes:
        row = [ATTRIBUTE_VALUES[a].index(getattr(sc, a)) for a in ATTRIBUTE_VALUES]
        for k in range(n_templates):
            captions.append(caption(sc, k))
            labels.append(row)
    return captions, torch.tensor(labels)


def summary_mask(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """True at the EOS token and every (EOS) padding token after it: the positions whose causal
    attention has read the whole caption."""
    first_eos = (ids == eos_id).int().argmax(dim=1, keepdim=True)
    return torch.arange(ids.shape[1])[None, :] >= first_eos


def heads_loss(heads, hidden, mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every attribute head at every summary position; also per-caption
    all-attributes correctness at the last position."""
    logits = heads(hidden)  # (B, 77, sum of classes)
    loss, right, start = 0.0, torch.ones(len(labels), dtype=torch.bool), 0
    for j, values in enumerate(ATTRIBUTE_VALUES.values()):
        part = logits[..., start : start + len(values)]
        start += len(values)
        target = labels[:, j : j + 1].expand(-1, hidden.shape[1])
        ce = F.cross_entropy(part.reshape(-1, len(values)), target.reshape(-1), reduction="none").view(mask.shape)
        loss = loss + (ce * mask).sum() / mask.sum()
        right &= part[:, -1].argmax(-1) == labels[:, j]
    return loss, right


def train_text_encoder(args, tokenizer, eos_id: int, budget: Phase) -> tuple[CLIPTextModel, int]:
    text_encoder = make_text_encoder(len(tokenizer), eos_id, tokenizer.bos_token_id, args.seed)
    text_encoder.requires_grad_(True).train()
    heads = torch.nn.Linear(TEXT_HIDDEN, sum(len(v) for v in ATTRIBUTE_VALUES.values()))
    captions, labels = caption_labels(training_scenes(), len(TEMPLATES))
    ids = tokenize(tokenizer, captions)
    mask = summary_mask(ids, eos_id)
    params = list(text_encoder.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=args.text_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed)
    step, avg = 0, None
    while not budget.done(step):
        idx = torch.randint(0, len(ids), (args.text_batch,), generator=g)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(budget.frac(step), 0.05, args.text_lr)
        loss, _ = heads_loss(heads, text_encoder(ids[idx]).last_hidden_state, mask[idx], labels[idx])
        optimizer_step(opt, loss, params)
        step += 1
        avg = loss.item() if avg is None else 0.95 * avg + 0.05 * loss.item()
        if step % 100 == 0:
            log(f"text step {step} loss {avg:.4f}")
    text_encoder.eval().requires_grad_(False)
    # Held-out combinations, fp16-rounded weights: what the UNet phase will see.
    held_caps, held_labels = caption_labels(held_out_scenes(), len(TEMPLATES))
    held_ids = tokenize(tokenizer, held_caps)
    rounded = copy.deepcopy(text_encoder).half().float()
    with torch.no_grad():
        _, right = heads_loss(heads, rounded(held_ids).last_hidden_state, summary_mask(held_ids, eos_id), held_labels)
    log(f"text encoder: {step} steps, held-out captions read right (all five attributes): {right.float().mean():.2%}")
    return text_encoder, step


# ---------------------------------------------------------------- phase 2: VAE
def train_vae(args, scenes, rng, phase: Phase) -> tuple[torch.nn.Module, int]:
    vae = make_vae(args.vae_width)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    step = 0
    while not phase.done(step):
        batch = []
        for _ in range(args.vae_batch):
            scene, seed = rng.choice(scenes), rng.randrange(2**31)
            if rng.random() < 0.6:
                batch.append(to_tensor(render(scene, seed)))
            else:  # a 64 px crop of a 256 px render: what the upscaler's VAE sees
                big = render(scene, seed, 256)
                x, y = rng.randrange(0, 193, 4), rng.randrange(0, 193, 4)
                batch.append(to_tensor(big.crop((x, y, x + 64, y + 64))))
        x = torch.stack(batch)
        for g in opt.param_groups:
            g["lr"] = lr_at(phase.frac(step), 0.05, args.vae_lr)
        loss, kl = vae_loss(vae, x, args.kl_weight)
        optimizer_step(opt, loss)
        step += 1
        if step % 25 == 0:
            log(f"vae step {step} loss {loss.item():.4f} kl {kl.item():.2f}")
    vae.eval().requires_grad_(False)
    # SD's convention: scaling_factor = 1 / std of the latents, measured on fresh renders.
    sample = torch.stack([to_tensor(render(rng.choice(scenes), rng.randrange(2**31))) for _ in range(2000)])
    vae.register_to_config(scaling_factor=float(1.0 / encode_means(vae, sample).std()))
    return vae, step


@torch.no_grad()
def encode_means(vae, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
    return torch.cat([vae.encode(images[i : i + batch]).latent_dist.mean for i in range(0, len(images), batch)])


# ---------------------------------------------------------------- phase 3: base UNet
def train_unet(args, vae, text_encoder, tokenizer, scenes, rng, phase: Phase, save_cb) -> tuple[torch.nn.Module, int]:
    # Precompute: latents of N renders and embeddings of every (training combo, template) caption.
    t0 = time.time()
    items = [(rng.randrange(len(scenes)), rng.randrange(2**31)) for _ in range(args.n_images)]
    images = torch.stack([to_tensor(render(scenes[i], s)) for i, s in items])
    scaling = vae.config.scaling_factor
    latents = encode_means(vae, images) * scaling
    del images
    captions = [caption(sc, k) for sc in scenes for k in range(len(TEMPLATES))] + [""]
    with torch.no_grad():
        ids = tokenize(tokenizer, captions)
        emb = torch.cat([text_encoder(ids[i : i + 512])[0] for i in range(0, len(ids), 512)])
    uncond = len(captions) - 1
    scene_idx = torch.tensor([i for i, _ in items])
    log(f"precomputed {len(latents)} latents (scaling {scaling:.4f}) and {len(captions)} captions in {time.time() - t0:.0f}s")

    sched = DDPMScheduler.from_config(BASE_SCHEDULER)
    unet = make_unet(args.unet_width)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.unet_lr, weight_decay=0.0)
    log(f"unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M params")
    g = torch.Generator().manual_seed(args.seed)
    step, saved_mid, avg = 0, False, None
    while not phase.done(step):
        idx = torch.randint(0, len(latents), (args.unet_batch,), generator=g)
        x0 = latents[idx]
        tmpl = torch.randint(0, len(TEMPLATES), (args.unet_batch,), generator=g)
        cap = scene_idx[idx] * len(TEMPLATES) + tmpl
        drop = torch.rand(args.unet_batch, generator=g) < 0.1
        cap = torch.where(drop, torch.full_like(cap, uncond), cap)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (args.unet_batch,), generator=g)
        xt = sched.add_noise(x0, noise, t)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(phase.frac(step), 0.03, args.unet_lr)
        pred = unet(xt, t, encoder_hidden_states=emb[cap]).sample
        per = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (per * min_snr_weight(sched, t)).mean()
        optimizer_step(opt, loss, unet.parameters())
        ema_update(ema, unet, step)
        step += 1
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % 50 == 0:
            log(f"unet step {step} loss {avg:.4f} frac {phase.frac(step):.2f}")
        if not saved_mid and phase.frac(step) >= 0.5:
            saved_mid = True
            save_cb(ema)  # an early checkpoint so evaluation code can be tried meanwhile
            log("saved mid-run base checkpoint")
    return ema.eval(), step


# ---------------------------------------------------------------- phase 4: upscaler UNet
def rescaled_vae(vae, mean_std: float):
    """A copy of ``vae`` whose latent means have std 1/0.08333, so the upscaler's forced scaling
    factor gives unit-variance latents. Means are scaled by k in quant_conv, the log-variance
    shifted by 2 ln k, and post_quant_conv divides by k: decoding is unchanged."""
    k = (1.0 / UPSCALER_SCALING) / mean_std
    out = copy.deepcopy(vae)
    with torch.no_grad():
        out.quant_conv.weight[:4] *= k
        out.quant_conv.bias[:4] *= k
        out.quant_conv.bias[4:] += 2 * math.log(k)
        out.post_quant_conv.weight *= 1.0 / k
    out.register_to_config(scaling_factor=UPSCALER_SCALING, sample_size=256)
    return out


def vae_for_256(vae, args, scenes, rng) -> torch.nn.Module:
    """The base VAE fine-tuned on whole 256 px renders, for the upscaler.

    Trained on 64 px images and crops only, the VAE drew a coloured frame round a 256 px decode
    and shifted its colours (GroupNorm statistics over a whole 256 px image differ from a crop's),
    so the upscaler learned from, and decoded through, a broken latent space.
    """
    vae = copy.deepcopy(vae).train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.up_vae_lr, weight_decay=0.0)
    t0 = time.time()
    for step in range(args.up_vae_steps):
        x = torch.stack([to_tensor(render(rng.choice(scenes), rng.randrange(2**31), 256)) for _ in range(2)])
        for g in opt.param_groups:
            g["lr"] = lr_at(step / args.up_vae_steps, 0.05, args.up_vae_lr)
        loss, _ = vae_loss(vae, x, args.kl_weight)
        optimizer_step(opt, loss)
        if (step + 1) % 25 == 0:
            log(f"x4 vae step {step + 1} loss {loss.item():.4f}")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        sample = torch.stack([to_tensor(render(rng.choice(scenes), rng.randrange(2**31), 256)) for _ in range(64)])
        mean_std = float(encode_means(vae, sample, 16).std())
    log(f"x4 vae: {args.up_vae_steps} steps on 256 px renders in {time.time() - t0:.0f}s")
    return rescaled_vae(vae, mean_std)


def train_upscaler(args, up_vae, scenes, rng, phase: Phase) -> tuple[torch.nn.Module, int]:
    t0 = time.time()
    n = args.n_up_images
    highs, lows = [], []
    for _ in range(n):
        scene, seed = rng.choice(scenes), rng.randrange(2**31)
        big = render(scene, seed, 256)
        # Low-res inputs like the base model's outputs: native 64 px renders (hard edges) or box
        # downsamples (soft edges), sometimes blurred like a VAE decode.
        low = render(scene, seed) if rng.random() < 0.5 else big.resize((64, 64), Image.BOX)
        if rng.random() < 0.5:
            low = low.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
        highs.append(to_tensor(big))
        lows.append(to_tensor(low))
    highs = torch.stack(highs)
    lows = torch.stack(lows)
    with torch.no_grad():
        lat = torch.cat([up_vae.encode(highs[i : i + 16]).latent_dist.mean for i in range(0, n, 16)]) * UPSCALER_SCALING
    del highs
    log(f"upscaler data: {n} pairs, latent std {lat.std():.3f}, {time.time() - t0:.0f}s")
    sched = DDPMScheduler.from_config(UPSCALER_SCHEDULER)
    low_sched = DDPMScheduler.from_config(LOW_RES_SCHEDULER)
    unet = make_upscaler_unet(args.up_width)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.up_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed + 1)
    ctx = torch.zeros(args.up_batch, 77, 64)  # no cross-attention: the text is unused
    c = args.up_crop
    step, avg = 0, None
    while not phase.done(step):
        idx = torch.randint(0, n, (args.up_batch,), generator=g)
        ys = torch.randint(0, 64 - c + 1, (args.up_batch,), generator=g)
        xs = torch.randint(0, 64 - c + 1, (args.up_batch,), generator=g)
        x0 = torch.stack([lat[i, :, y : y + c, x : x + c] for i, y, x in zip(idx, ys, xs)])
        lo = torch.stack([lows[i, :, y : y + c, x : x + c] for i, y, x in zip(idx, ys, xs)])
        # Noise levels: mostly low (the pipeline's default is 20), sometimes the full range.
        hi_range = torch.rand(args.up_batch, generator=g) < 0.3
        level = torch.where(hi_range, torch.randint(0, 351, (args.up_batch,), generator=g), torch.randint(0, 61, (args.up_batch,), generator=g))
        lo = low_sched.add_noise(lo, torch.randn(lo.shape, generator=g), level)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (args.up_batch,), generator=g)
        xt = sched.add_noise(x0, noise, t)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(phase.frac(step), 0.03, args.up_lr)
        pred = unet(torch.cat([xt, lo], 1), t, encoder_hidden_states=ctx, class_labels=level).sample
        loss = F.mse_loss(pred, x0)
        optimizer_step(opt, loss, unet.parameters())
        ema_update(ema, unet, step)
        step += 1
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % 50 == 0:
            log(f"upscaler step {step} loss {avg:.5f} frac {phase.frac(step):.2f}")
    return ema.eval(), step


# ---------------------------------------------------------------- saving
def write_tokenizer_and_scheduler(folder: Path, schedulers: dict[str, dict]) -> None:
    tok = folder / "tokenizer"
    shutil.rmtree(tok, ignore_errors=True)
    write_world_tokenizer(tok)
    for name, cfg in schedulers.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "scheduler_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def drop_local_paths(folder: Path) -> None:
    """Remove ``_name_or_path`` from written configs: components loaded back from an earlier
    phase's folder would otherwise ship the training machine's paths."""
    for config in folder.rglob("config.json"):
        data = json.loads(config.read_text())
        if data.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_base(folder: Path, unet, vae, text_encoder, tokenizer) -> None:
    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae), text_encoder=copy.deepcopy(text_encoder), tokenizer=tokenizer, unet=copy.deepcopy(unet),
        scheduler=DDPMScheduler.from_config(BASE_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    ).to(torch.float16)
    shutil.rmtree(folder, ignore_errors=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    write_tokenizer_and_scheduler(folder, {"scheduler": BASE_SCHEDULER})
    drop_local_paths(folder)


def save_upscaler(folder: Path, unet, vae, text_encoder, tokenizer) -> None:
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=copy.deepcopy(text_encoder), tokenizer=tokenizer, unet=copy.deepcopy(unet),
        low_res_scheduler=DDPMScheduler.from_config(LOW_RES_SCHEDULER),
        scheduler=DDPMScheduler.from_config(UPSCALER_SCHEDULER), max_noise_level=350,
    ).to(torch.float16)
    shutil.rmtree(folder, ignore_errors=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    write_tokenizer_and_scheduler(folder, {"scheduler": UPSCALER_SCHEDULER, "low_res_scheduler": LOW_RES_SCHEDULER})
    drop_local_paths(folder)


def save_component(model: torch.nn.Module, folder: Path) -> None:
    """One component as an fp16 diffusers/transformers folder (config + safetensors)."""
    shutil.rmtree(folder, ignore_errors=True)
    copy.deepcopy(model).half().save_pretrained(folder, safe_serialization=True)


def load_frozen(cls, folder: Path):
    """A component written by an earlier phase, in fp32, frozen: exactly the weights that ship."""
    if not folder.is_dir():
        raise SystemExit(f"{folder} is missing: run the phase that writes it first (see --phases)")
    return cls.from_pretrained(folder, torch_dtype=torch.float32).eval().requires_grad_(False)


def per_phase(values: str, phases: list[str], flag: str, cast) -> list:
    """One value per phase in ``phases``, or one per phase of PHASES (the defaults), picked out."""
    items = [cast(x) for x in values.split(",")]
    if len(items) == len(phases):
        return items
    if len(items) == len(PHASES):
        return [items[PHASES.index(p)] for p in phases]
    raise SystemExit(f"{flag} needs one value per phase in --phases ({len(phases)}), got {len(items)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu only: the committed weights were trained on cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "sdflow" / "models"))
    p.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset of " + ",".join(PHASES))
    p.add_argument("--minutes", default="3,25,55,25", help="wall-time budget per phase in --phases (comma-separated)")
    p.add_argument("--steps", default=None, help="exact steps per phase in --phases (replays a run; overrides --minutes)")
    p.add_argument("--vae-width", type=int, default=16)
    p.add_argument("--unet-width", type=int, default=32)
    p.add_argument("--up-width", type=int, default=32)
    p.add_argument("--text-batch", type=int, default=128)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--unet-batch", type=int, default=64)
    p.add_argument("--up-batch", type=int, default=16)
    p.add_argument("--up-crop", type=int, default=32, help="latent crop side for upscaler training")
    p.add_argument("--text-lr", type=float, default=1e-3)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--unet-lr", type=float, default=1e-3)
    p.add_argument("--up-lr", type=float, default=1e-3)
    p.add_argument("--up-vae-steps", type=int, default=500, help="fine-tuning steps of the x4 VAE on 256 px renders")
    p.add_argument("--up-vae-lr", type=float, default=5e-4)
    p.add_argument("--kl-weight", type=float, default=1e-4)
    p.add_argument("--n-images", type=int, default=16000)
    p.add_argument("--n-up-images", type=int, default=1200)
    p.add_argument("--record", default=str(Path(__file__).resolve().parent / "last_run.json"),
                   help="JSON file the steps and settings of each phase are merged into")
    args = p.parse_args()
    if args.device != "cpu":
        raise SystemExit("this script trains on cpu only; the GPU calibration used a different script")
    phases = [x for x in args.phases.split(",") if x]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        raise SystemExit(f"unknown phase(s) {unknown}; choose from {list(PHASES)}")
    minutes = per_phase(args.minutes, phases, "--minutes", float)
    steps = per_phase(args.steps, phases, "--steps", int) if args.steps else [None] * len(phases)
    torch.set_num_threads(args.threads)  # the machine has 2 cores; phases may run side by side
    out = Path(args.out)
    base, up_dir = out / "shapes", out / "shapes-x4"
    tok_dir = base / "tokenizer"
    eos = write_world_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    scenes = training_scenes()
    record_path = Path(args.record)
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record = record if "phases" in record else {"phases": {}}

    for phase_name, budget_min, exact in zip(phases, minutes, steps):
        rng = seed_phase(args.seed, phase_name)
        budget = Phase(budget_min, exact)
        if phase_name == "text":
            model, n = train_text_encoder(args, tokenizer, eos, budget)
            save_component(model, base / "text_encoder")
        elif phase_name == "vae":
            model, n = train_vae(args, scenes, rng, budget)
            save_component(model, base / "vae")
        elif phase_name == "unet":
            vae = load_frozen(AutoencoderKL, base / "vae")
            text_encoder = load_frozen(CLIPTextModel, base / "text_encoder")

            def save_cb(unet, vae=vae, text_encoder=text_encoder):
                save_base(base, unet, vae, text_encoder, tokenizer)

            model, n = train_unet(args, vae, text_encoder, tokenizer, scenes, rng, budget, save_cb)
            save_cb(model)
        else:
            up_vae = vae_for_256(load_frozen(AutoencoderKL, base / "vae"), args, scenes, rng)
            model, n = train_upscaler(args, up_vae, scenes, rng, budget)
            save_upscaler(up_dir, model, up_vae, load_frozen(CLIPTextModel, base / "text_encoder"), tokenizer)
        minutes_run = (time.time() - budget.start) / 60
        log(f"phase {phase_name} done: {n} steps in {minutes_run:.1f} min")
        settings = {k: v for k, v in vars(args).items() if k not in ("phases", "minutes", "steps", "out", "record")}
        record["phases"][phase_name] = {"steps": n, "minutes": round(minutes_run, 2), **settings}
        record_path.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
