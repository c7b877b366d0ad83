"""Measure what the offline default model "shapes" draws, with the weight-free judge.

1. text2img on the 200 held-out captions (attribute combinations never seen in training), one seed
   each: accuracy per attribute and all-correct;
2. img2img: draw "... red <shape> ..." then img2img to the same caption with "green" at strength
   0.75: the colour should flip while position (and background) hold;
3. upscaler: shapes-x4 on the 64 px outputs; the judge should read the same scene from the 64 px
   image and the downscaled 256 px output.

text2img goes through sdflow's own workflow (``sdflow.api.run_workflow("text2img", ...)``) when
``sdflow.api`` imports, else through diffusers' StableDiffusionPipeline on the same folder; the path
taken is printed. img2img and upscaling use diffusers' pipelines directly.

    python bench/default_model_accuracy.py [--n 200] [--steps 20] [--guidance 2] [--backend auto]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdflow.world.captions import Scene, caption, held_out_captions  # noqa: E402
from sdflow.world.judge import ATTRIBUTES, accuracy, judge  # noqa: E402

MODELS = ROOT / "sdflow" / "models"


def make_text2img(backend: str, model: Path, steps: int, guidance: float):
    """Return (generate(prompt, seed) -> PIL image, description of the path taken)."""
    if backend in ("auto", "sdflow"):
        try:
            from sdflow.api import run_workflow
        except Exception as exc:  # noqa: BLE001 - any import failure means "not available yet"
            if backend == "sdflow":
                raise
            print(f"note: sdflow.api not importable ({type(exc).__name__}: {exc}); using diffusers fallback")
        else:
            # The shapes preset (vocabulary, size, guidance) pointed at this folder: the packaged
            # weights by default, or a fresh training run's.
            model_overrides = ["model=shapes"]
            if model.resolve() != (MODELS / "shapes").resolve():
                model_overrides.append(f"model.path={model.resolve()}")

            def generate(prompt: str, seed: int):
                result = run_workflow(
                    "text2img",
                    # Quoted: Hydra reads an unquoted comma as a list/sweep.
                    [*model_overrides, f"prompt='{prompt}'", f"seed={seed}", f"steps={steps}", f"guidance={guidance}"],
                )
                return result.images()[0]

            return generate, "sdflow.api.run_workflow('text2img')"
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)

    def generate(prompt: str, seed: int):
        g = torch.Generator().manual_seed(seed)
        return pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=g, height=64, width=64).images[0]

    return generate, "diffusers StableDiffusionPipeline (fallback)"


@torch.no_grad()
def vae_ceiling(model: Path, n: int) -> None:
    import numpy as np
    from diffusers import AutoencoderKL
    from PIL import Image

    from sdflow.world.render import render

    vae = AutoencoderKL.from_pretrained(model / "vae", torch_dtype=torch.float32)
    items = [(scene, seed) for _, scene, seed in held_out_captions(n)]
    x = torch.stack([torch.from_numpy(np.asarray(render(s, seed), dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1 for s, seed in items])
    y = vae.decode(vae.encode(x).latent_dist.mean).sample
    y = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    acc = accuracy([judge(Image.fromarray(a)) for a in y], [s for s, _ in items])
    print(f"VAE round trip on {n} held-out renders (ceiling for text2img):")
    print(table({"vae round trip": acc}))


def table(rows: dict[str, dict[str, float]]) -> str:
    cols = list(ATTRIBUTES) + ["all"]
    lines = ["| run | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, acc in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * acc[c]:.1f}%" for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(MODELS / "shapes"))
    p.add_argument("--upscaler", default=str(MODELS / "shapes-x4"))
    p.add_argument("--backend", choices=["auto", "sdflow", "diffusers"], default="auto")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--n-img2img", type=int, default=40)
    p.add_argument("--n-upscale", type=int, default=200)
    p.add_argument("--upscale-steps", type=int, default=20)
    p.add_argument("--vae-ceiling", type=int, default=1, help="0 skips the VAE round-trip check")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save", default=None, help="folder to write sample images to")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = Path(args.model)
    save = Path(args.save) if args.save else None
    if save:
        save.mkdir(parents=True, exist_ok=True)

    # 0. the VAE's ceiling: how well the judge reads renders after an encode/decode round trip
    if args.vae_ceiling:
        vae_ceiling(model, 300)

    # 1. text2img on held-out captions
    generate, path = make_text2img(args.backend, model, args.steps, args.guidance)
    print(f"text2img path: {path}; model {model}; {args.steps} steps, guidance {args.guidance}")
    t0 = time.time()
    items = held_out_captions(args.n)
    images, readings, scenes = [], [], []
    for i, (text, scene, seed) in enumerate(items):
        image = generate(text, seed)
        images.append(image)
        readings.append(judge(image))
        scenes.append(scene)
        if save and i < 64:
            image.save(save / f"t2i_{i:03d}.png")
    acc = accuracy(readings, scenes)
    print(f"\nheld-out text2img ({len(items)} captions, {time.time() - t0:.0f}s)")
    print(table({"text2img held-out": acc}))

    if args.n_img2img > 0:
        img2img_check(model, generate, args, save)
    if args.n_upscale > 0:
        upscale_check(args, images, items, save)


def img2img_check(model: Path, generate, args, save: Path | None) -> None:
    """Red -> green at strength 0.75: the colour should flip, position and background hold."""
    from diffusers import StableDiffusionImg2ImgPipeline

    i2i = StableDiffusionImg2ImgPipeline.from_pretrained(model, torch_dtype=torch.float32, safety_checker=None)
    i2i.set_progress_bar_config(disable=True)
    sources = [(t, s, seed) for t, s, seed in held_out_captions(400) if s.background not in ("red", "green")]
    sources = sources[: args.n_img2img]
    flips = holds_pos = holds_bg = src_red = 0
    for k, (_, scene, seed) in enumerate(sources):
        red = Scene(scene.shape, "red", scene.size, scene.position, scene.background)
        green = Scene(scene.shape, "green", scene.size, scene.position, scene.background)
        src = generate(caption(red, k), seed)
        out = i2i(caption(green, k), image=src, strength=0.75, num_inference_steps=args.steps,
                  guidance_scale=args.guidance, generator=torch.Generator().manual_seed(seed)).images[0]
        r_src, r_out = judge(src), judge(out)
        src_red += r_src.colour == "red"
        flips += r_out.colour == "green"
        holds_pos += r_out.position == r_src.position
        holds_bg += r_out.background == r_src.background
        if save and k < 16:
            src.save(save / f"i2i_{k:02d}_src.png")
            out.save(save / f"i2i_{k:02d}_out.png")
    n = len(sources)
    print(f"\nimg2img red -> green, strength 0.75 ({n} pairs): source read red {src_red / n:.1%}, "
          f"output read green {flips / n:.1%}, position held {holds_pos / n:.1%}, background held {holds_bg / n:.1%}")


def upscale_check(args, images, items, save: Path | None) -> None:
    """The judge should read the same scene from the 64 px image and its x4 upscale."""
    from diffusers import StableDiffusionUpscalePipeline

    up = StableDiffusionUpscalePipeline.from_pretrained(args.upscaler, torch_dtype=torch.float32)
    up.set_progress_bar_config(disable=True)
    agree = {a: 0 for a in ATTRIBUTES}
    agree_all = 0
    m = min(args.n_upscale, len(images))
    t0 = time.time()
    for k in range(m):
        text, _, seed = items[k]
        # guidance 1: the upscaler has no cross-attention, so text guidance would only double the cost
        big = up(text, image=images[k], num_inference_steps=args.upscale_steps, guidance_scale=1.0,
                 generator=torch.Generator().manual_seed(seed)).images[0]
        r_lo, r_hi = judge(images[k]), judge(big)  # judge box-downscales 256 -> 64
        same = {a: getattr(r_lo, a) == getattr(r_hi, a) for a in ATTRIBUTES}
        for a in ATTRIBUTES:
            agree[a] += same[a]
        agree_all += all(same.values())
        if save and k < 16:
            big.save(save / f"x4_{k:02d}.png")
    print(f"\nupscaler agreement 64 px vs 256 px->64 ({m} images, {args.upscale_steps} steps, {time.time() - t0:.0f}s): "
          + ", ".join(f"{a} {agree[a] / m:.1%}" for a in ATTRIBUTES) + f", all {agree_all / m:.1%}")


if __name__ == "__main__":
    main()
