"""Train sdflow's offline default models "shapes" (64 px text-to-image) and "shapes-x4" (x4 upscaler).

Everything is rendered by sdflow.world (no data set, no download). Phases, in order, each bounded by a
wall-time budget (or an exact step count, to replay a run):
1. VAE (64x64x3 <-> 16x16x4, no attention) on world images at 64 px and 64 px crops of 256 px renders,
   so the same fully convolutional VAE serves the upscaler at 256 px;
2. base UNet on precomputed latents (posterior means) with a frozen random CLIP text encoder and
   precomputed caption embeddings; 10% empty captions for classifier-free guidance; min-SNR loss
   weighting and an EMA of the weights, both of which help most in short runs;
3. upscaler UNet (in_channels 7, noise level as class label) on latent crops of 256 px renders
   paired with their 64 px versions.
Then both are written as fp16 diffusers folders under sdflow/models/. Steps actually run are written
to train/last_run.json; pass them back with --vae-steps/--unet-steps/--up-steps to replay a run.

Usage:  python train/train_shapes.py --seed 0 --vae-minutes 8 --unet-minutes 40 --up-minutes 8
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

from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionUpscalePipeline  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

from sdflow.world.captions import TEMPLATES, caption, training_scenes  # noqa: E402
from sdflow.world.render import render  # noqa: E402
from sdflow.world.tokenizer import write_world_tokenizer  # noqa: E402
from shapes_models import make_text_encoder, make_unet, make_upscaler_unet, make_vae  # noqa: E402

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


def optimizer_step(opt, model, ema, loss, step: int) -> None:
    """One clipped AdamW step, then the EMA copy follows."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    ema_update(ema, model, step)


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float = 0.999) -> None:
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - d)


def min_snr_weight(scheduler: DDPMScheduler, t: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    ac = scheduler.alphas_cumprod[t]
    snr = ac / (1 - ac)
    return torch.clamp(snr, max=gamma) / snr


# ---------------------------------------------------------------- phase 1: VAE
def train_vae(args, scenes, rng) -> tuple[torch.nn.Module, int]:
    vae = make_vae(args.vae_width)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    phase, step = Phase(args.vae_minutes, args.vae_steps), 0
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
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        kl = post.kl().mean() / (16 * 16 * 4)
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 25 == 0:
            log(f"vae step {step} loss {loss.item():.4f} kl {kl.item():.2f}")
    return vae.eval(), step


@torch.no_grad()
def encode_means(vae, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
    return torch.cat([vae.encode(images[i : i + batch]).latent_dist.mean for i in range(0, len(images), batch)])


# ---------------------------------------------------------------- phase 2: base UNet
def train_unet(args, vae, text_encoder, tokenizer, scenes, rng, save_cb) -> tuple[torch.nn.Module, float, int]:
    # Precompute: latents of N renders and embeddings of every (training combo, template) caption.
    t0 = time.time()
    items = [(rng.randrange(len(scenes)), rng.randrange(2**31)) for _ in range(args.n_images)]
    images = torch.stack([to_tensor(render(scenes[i], s)) for i, s in items])
    means = encode_means(vae, images)
    scaling = float(1.0 / means.std())
    latents = means * scaling
    del images
    captions = [caption(sc, k) for sc in scenes for k in range(len(TEMPLATES))] + [""]
    with torch.no_grad():
        ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
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
    phase, step, saved_mid, avg = Phase(args.unet_minutes, args.unet_steps), 0, False, None
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
        optimizer_step(opt, unet, ema, loss, step)
        step += 1
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % 50 == 0:
            log(f"unet step {step} loss {avg:.4f} frac {phase.frac(step):.2f}")
        if not saved_mid and phase.frac(step) >= 0.5:
            saved_mid = True
            save_cb(ema, scaling)  # an early checkpoint so evaluation code can be tried meanwhile
            log("saved mid-run base checkpoint")
    return ema.eval(), scaling, step


# ---------------------------------------------------------------- phase 3: upscaler UNet
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


def train_upscaler(args, up_vae, scenes, rng) -> tuple[torch.nn.Module, int]:
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
    phase, step, avg = Phase(args.up_minutes, args.up_steps), 0, None
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
        optimizer_step(opt, unet, ema, loss, step)
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


def save_base(folder: Path, unet, vae, text_encoder, tokenizer, scaling: float) -> None:
    vae = copy.deepcopy(vae)
    vae.register_to_config(scaling_factor=scaling)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=copy.deepcopy(unet),
        scheduler=DDPMScheduler.from_config(BASE_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    ).to(torch.float16)
    shutil.rmtree(folder, ignore_errors=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    write_tokenizer_and_scheduler(folder, {"scheduler": BASE_SCHEDULER})


def save_upscaler(folder: Path, unet, vae, text_encoder, tokenizer) -> None:
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=copy.deepcopy(unet),
        low_res_scheduler=DDPMScheduler.from_config(LOW_RES_SCHEDULER),
        scheduler=DDPMScheduler.from_config(UPSCALER_SCHEDULER), max_noise_level=350,
    ).to(torch.float16)
    shutil.rmtree(folder, ignore_errors=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    write_tokenizer_and_scheduler(folder, {"scheduler": UPSCALER_SCHEDULER, "low_res_scheduler": LOW_RES_SCHEDULER})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda; the committed weights were trained on cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "sdflow" / "models"))
    p.add_argument("--vae-minutes", type=float, default=8.0)
    p.add_argument("--unet-minutes", type=float, default=40.0)
    p.add_argument("--up-minutes", type=float, default=8.0)
    p.add_argument("--vae-steps", type=int, default=None, help="exact steps (overrides the time budget)")
    p.add_argument("--unet-steps", type=int, default=None)
    p.add_argument("--up-steps", type=int, default=None)
    p.add_argument("--vae-width", type=int, default=16)
    p.add_argument("--unet-width", type=int, default=32)
    p.add_argument("--up-width", type=int, default=32)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--unet-batch", type=int, default=64)
    p.add_argument("--up-batch", type=int, default=16)
    p.add_argument("--up-crop", type=int, default=32, help="latent crop side for upscaler training")
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--unet-lr", type=float, default=1e-3)
    p.add_argument("--up-lr", type=float, default=1e-3)
    p.add_argument("--kl-weight", type=float, default=1e-4)
    p.add_argument("--n-images", type=int, default=16000)
    p.add_argument("--n-up-images", type=int, default=1200)
    args = p.parse_args()
    if args.device != "cpu":
        raise SystemExit("this script trains on cpu only; the GPU calibration used a different script")
    torch.set_num_threads(args.threads)  # one core: the machine is shared
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    out = Path(args.out)
    started = time.time()

    tok_dir = out / "shapes" / "tokenizer"
    eos = write_world_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    text_encoder = make_text_encoder(len(tokenizer), eos, tokenizer.bos_token_id, args.seed)
    scenes = training_scenes()

    vae, vae_steps = train_vae(args, scenes, rng)
    vae.requires_grad_(False)
    log(f"vae done: {vae_steps} steps")

    def save_cb(unet, scaling):
        save_base(out / "shapes", unet, vae, text_encoder, tokenizer, scaling)

    unet, scaling, unet_steps = train_unet(args, vae, text_encoder, tokenizer, scenes, rng, save_cb)
    save_base(out / "shapes", unet, vae, text_encoder, tokenizer, scaling)
    log(f"base model saved: {unet_steps} unet steps")

    up_vae = rescaled_vae(vae, 1.0 / scaling)
    up_unet, up_steps = train_upscaler(args, up_vae, scenes, rng)
    save_upscaler(out / "shapes-x4", up_unet, up_vae, text_encoder, tokenizer)
    info = dict(vars(args), vae_steps=vae_steps, unet_steps=unet_steps, up_steps=up_steps,
                scaling_factor=scaling, minutes=(time.time() - started) / 60)
    (Path(__file__).resolve().parent / "last_run.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"all done in {info['minutes']:.1f} min: {info}")


if __name__ == "__main__":
    main()
