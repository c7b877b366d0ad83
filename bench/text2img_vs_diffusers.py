"""Time the same text2img job through sdflow and through plain diffusers, in one process.

    python bench/text2img_vs_diffusers.py                 # tiny model, CPU fp32
    python bench/text2img_vs_diffusers.py --sd15-shapes   # SD1.5-shaped random fp16 weights, 512x512 (GPU)

Both sides get the same components (diffusers' pipeline is built from the very modules sdflow's cache
holds), the same scheduler, steps, guidance, seed and size. Runs alternate (sdflow, diffusers, sdflow,
...) after a warm-up, and the script prints the median of each and the ratio. sdflow's time includes
its whole per-job path (config composition, validation, execution), not the PNG write.
Goal: sdflow <= 1.02x diffusers.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdflow.api import compose_config, plan_workflow, run_plan  # noqa: E402
from sdflow.engine import process_cache  # noqa: E402

# SD1.5's published UNet and VAE configs (runwayml/stable-diffusion-v1-5), for random weights that
# time exactly like the real ones.
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                 max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)


def build_sd15_shaped(folder: Path) -> Path:
    """SD1.5-shaped random weights saved as a diffusers folder (fp16 safetensors)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdflow.models.clip_vocab import end_token_id
    from sdflow.models.tiny import SD1_SCHEDULER_CONFIG, make_tokenizer, write_json

    torch.manual_seed(0)
    tokenizer = make_tokenizer(folder / "tokenizer")
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), eos_token_id=end_token_id(folder / "tokenizer"),
                                        bos_token_id=tokenizer.bos_token_id, pad_token_id=1, **SD15_TEXT))
    pipe = StableDiffusionPipeline(unet=UNet2DConditionModel(**SD15_UNET), vae=AutoencoderKL(**SD15_VAE),
                                   text_encoder=text, tokenizer=tokenizer,
                                   scheduler=PNDMScheduler.from_config(SD1_SCHEDULER_CONFIG), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    vocab = {n: (folder / "tokenizer" / n).read_bytes() for n in ("vocab.json", "merges.txt")}
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    for name, data in vocab.items():
        (folder / "tokenizer" / name).write_bytes(data)
    write_json(folder / "scheduler" / "scheduler_config.json", SD1_SCHEDULER_CONFIG)
    return folder


def scratch(prefix: str) -> Path:
    """A temporary folder removed when the script ends (built weights and PNGs are not worth keeping)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd15-shapes", action="store_true", help="SD1.5-shaped random fp16 weights at 512x512")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scheduler", default="euler")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from diffusers import StableDiffusionPipeline

    device = "cuda" if args.sd15_shapes and torch.cuda.is_available() else "cpu"
    dtype = "float16" if device == "cuda" else "float32"
    # runtime.output_cache=false: every repeat runs its nodes (a repeat of the same run would reuse every output)
    overrides = [f"steps={args.steps}", f"scheduler={args.scheduler}", "seed=1", "prompt=a lighthouse at dusk",
                 f"runtime.device={device}", f"runtime.dtype={dtype}", "runtime.output_cache=false"]
    if args.sd15_shapes:
        folder = build_sd15_shaped(scratch("sd15-shaped-"))
        overrides += ["model=sd15", f"model.path={folder}", "width=512", "height=512"]
    else:
        overrides += ["model=tiny"]
    # The benchmark times the workflow up to the decoded image: no safety check (the model has none), no PNG write.
    config = compose_config(["workflow=text2img"] + overrides)
    out_dir = scratch("sdflow-bench-")

    def sdflow_once():
        plan = plan_workflow(config)
        for node_id in ("save", "safety"):
            plan.order.remove(node_id)
        return run_plan(plan, config, out_dir, progress=False).outputs["decode"]["image"].pixels

    sdflow_once()  # loads the components into the cache
    cache = process_cache()
    source = next(k[0] for k in cache.loaded_keys if k[1] == "unet")
    component = {k[1]: cache.get(k, lambda: None) for k in cache.keys() if k[0] == source}
    pipe = StableDiffusionPipeline(unet=component["unet"], vae=component["vae"], text_encoder=component["text_encoder"],
                                   tokenizer=component["tokenizer"], scheduler=component["scheduler"],
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    from sdflow.nodes.scheduler import scheduler_class

    pipe.scheduler = scheduler_class(args.scheduler).from_config(component["scheduler"].config)
    pipe.set_progress_bar_config(disable=True)
    width = height = 512 if args.sd15_shapes else 64

    def diffusers_once():
        return pipe(prompt="a lighthouse at dusk", num_inference_steps=args.steps, guidance_scale=7.5, height=height,
                    width=width, generator=[torch.Generator().manual_seed(1)], output_type="pt").images

    diffusers_once()
    ours, theirs = [], []
    for _ in range(args.repeats):
        for fn, times in ((sdflow_once, ours), (diffusers_once, theirs)):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
    a, b = sdflow_once().float().cpu(), diffusers_once().float().cpu()
    figures = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "model": "sd15-shaped random fp16, 512x512" if args.sd15_shapes else "tiny, 64x64 fp32",
        "steps": args.steps, "scheduler": args.scheduler, "repeats": args.repeats,
        "sdflow_median_s": statistics.median(ours), "diffusers_median_s": statistics.median(theirs),
        "ratio": statistics.median(ours) / statistics.median(theirs),
        "max_abs_diff": float((a - b).abs().max()),
    }
    print(f"text2img on {figures['device']} ({figures['model']}, {args.steps} steps, {args.scheduler}):")
    print(f"  sdflow    median {figures['sdflow_median_s'] * 1000:9.1f} ms")
    print(f"  diffusers median {figures['diffusers_median_s'] * 1000:9.1f} ms")
    print(f"  ratio sdflow/diffusers = {figures['ratio']:.3f}   (goal <= 1.02)   max abs diff {figures['max_abs_diff']:.1e}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
