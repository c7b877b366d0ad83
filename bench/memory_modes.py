"""Peak GPU memory and time per image of each memory mode, sdflow against diffusers' own switch, in one process.

    python bench/memory_modes.py --shape sd15            # SD1.5-shaped random fp16 weights, 512x512 (GPU)
    python bench/memory_modes.py --shape sdxl            # SDXL-shaped, 1024x1024 (GPU)
    python bench/memory_modes.py --shape tiny --steps 2  # the tiny model on this CPU: the script's own check

Random weights from the published configs (sdflow/models/configs/) time and weigh like the real ones. For each
mode, sdflow runs the workflow with the runtime switch (``runtime.offload=model``, ...) from an empty component
cache, and diffusers runs its pipeline with the matching call (``enable_model_cpu_offload()``, ...); each is run
once to load and warm up, then timed, its peak of torch.cuda.max_memory_allocated taken over the timed run (the
weights resident on the GPU included). The table gives both and sdflow/diffusers ratios. On a CPU there is no
peak to read: only times.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdflow.api import compose_config, plan_workflow, run_plan  # noqa: E402
from sdflow.engine import process_cache, process_output_cache  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "sdflow" / "models" / "configs"
SHAPES = {"sd15": ("text2img", 512), "sdxl": ("sdxl", 1024), "tiny": ("text2img", 64)}

# mode: (sdflow's runtime overrides, what diffusers calls on its pipeline)
MODES = {
    "plain": ([], lambda pipe: None),
    "attention_slicing": (["runtime.attention_slicing=auto"], lambda pipe: pipe.enable_attention_slicing()),
    "vae_slicing": (["runtime.vae_slicing=true"], lambda pipe: pipe.vae.enable_slicing()),
    "vae_tiling": (["runtime.vae_tiling=true"], lambda pipe: pipe.vae.enable_tiling()),
    "offload=model": (["runtime.offload=model"], lambda pipe: pipe.enable_model_cpu_offload(device=DEVICE)),
    "offload=sequential": (["runtime.offload=sequential"],
                           lambda pipe: pipe.enable_sequential_cpu_offload(device=DEVICE)),
}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def build_random_model(shape: str, folder: Path, dtype: torch.dtype) -> Path:
    """A diffusers folder with random weights in the architecture of sdflow/models/configs/SHAPE (safetensors)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sdflow.models.clip_vocab import end_token_id
    from sdflow.models.tiny import make_tokenizer

    source = CONFIGS / shape
    torch.manual_seed(0)
    index = json.loads((source / "model_index.json").read_text())
    for name, (_, cls) in ((k, v) for k, v in index.items() if isinstance(v, list) and v[1] is not None):
        target = folder / name
        if name.startswith("tokenizer"):
            make_tokenizer(target)
            continue
        config = source / name / ("scheduler_config.json" if name == "scheduler" else "config.json")
        if name == "scheduler":
            target.mkdir(parents=True)
            shutil.copy(config, target / "scheduler_config.json")
            continue
        if name.startswith("text_encoder"):
            tokenizer_folder = folder / name.replace("text_encoder", "tokenizer")
            make_tokenizer(tokenizer_folder) if not tokenizer_folder.exists() else None
            text_config = CLIPTextConfig.from_json_file(config)
            text_config.eos_token_id = end_token_id(tokenizer_folder)
            model = (CLIPTextModelWithProjection if cls == "CLIPTextModelWithProjection" else CLIPTextModel)(text_config)
        else:
            model_class = {"UNet2DConditionModel": UNet2DConditionModel, "AutoencoderKL": AutoencoderKL}[cls]
            model = model_class.from_config(json.loads(config.read_text()))
        model.to(dtype).save_pretrained(target, safe_serialization=True)
    shutil.copy(source / "model_index.json", folder / "model_index.json")
    return folder


def scratch(prefix: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def forget_everything() -> None:
    """Drop every loaded weight, so the next mode starts from nothing on the GPU."""
    process_cache().clear()
    process_output_cache().clear()
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def measured(run) -> tuple[float, float | None]:
    """Seconds of ``run()`` after a warm-up call, and the peak GiB allocated on the GPU meanwhile."""
    run()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else None
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="sd15")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=2, help="images per run (VAE slicing matters from 2)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: " + ", ".join(MODES))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from diffusers import DiffusionPipeline

    workflow, size = SHAPES[args.shape]
    dtype = "float16" if DEVICE == "cuda" else "float32"
    if args.shape == "tiny":
        from sdflow.models.builtin import builtin_model

        model, folder = ["model=tiny"], builtin_model("tiny")
    else:
        folder = build_random_model(args.shape, scratch(f"{args.shape}-shaped-"), getattr(torch, dtype))
        model = [f"model={args.shape}", f"model.path={folder}"]
    seeds = list(range(args.batch))
    base = [f"workflow={workflow}", *model, f"width={size}", f"height={size}", f"steps={args.steps}",
            f"seed=[{','.join(map(str, seeds))}]", "prompt=a lighthouse at dusk", f"runtime.device={DEVICE}",
            f"runtime.dtype={dtype}", "runtime.output_cache=false"]
    out_dir = scratch("sdflow-bench-")
    rows = {}
    for mode in args.modes.split(","):
        overrides, switch = MODES[mode]
        config = compose_config(base + overrides)
        forget_everything()

        def sdflow_once():
            plan = plan_workflow(config)
            for node_id in ("save", "safety"):
                if node_id in plan.order:
                    plan.order.remove(node_id)
            return run_plan(plan, config, out_dir, progress=False)

        ours = measured(sdflow_once)
        forget_everything()
        no_checker = {} if args.shape == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
        pipe = DiffusionPipeline.from_pretrained(str(folder), torch_dtype=getattr(torch, dtype), **no_checker)
        if not mode.startswith("offload"):
            pipe.to(DEVICE)
        switch(pipe)
        pipe.set_progress_bar_config(disable=True)

        def diffusers_once():
            return pipe(prompt=["a lighthouse at dusk"] * len(seeds), num_inference_steps=args.steps, height=size,
                        width=size, generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt")

        theirs = measured(diffusers_once)
        pipe = None  # (its weights freed before the next mode loads)
        rows[mode] = {"sdflow_s": ours[0], "diffusers_s": theirs[0], "sdflow_peak_gib": ours[1],
                      "diffusers_peak_gib": theirs[1]}
        print(f"{mode}: {rows[mode]}", file=sys.stderr, flush=True)
    device = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    print(f"\n{args.shape}-shaped {dtype}, {size}x{size}, {args.batch} images, {args.steps} steps, on {device}\n")
    print("| mode | sdflow s/image | diffusers s/image | time ratio | sdflow peak GiB | diffusers peak GiB |")
    print("|---|---|---|---|---|---|")
    for mode, row in rows.items():
        peaks = ("-", "-") if row["sdflow_peak_gib"] is None else \
            (f"{row['sdflow_peak_gib']:.2f}", f"{row['diffusers_peak_gib']:.2f}")
        print(f"| {mode} | {row['sdflow_s'] / args.batch:.3f} | {row['diffusers_s'] / args.batch:.3f} | "
              f"{row['sdflow_s'] / row['diffusers_s']:.2f}x | {peaks[0]} | {peaks[1]} |")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "shape": args.shape, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
