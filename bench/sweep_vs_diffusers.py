"""Time an ``sdflow -m seed=0,...,N-1`` sweep, fused and job by job, against plain diffusers, in one run.

    python bench/sweep_vs_diffusers.py                    # tiny model, CPU fp32, 16 jobs
    python bench/sweep_vs_diffusers.py --sd15-shapes      # SD1.5-shaped random fp16 weights, 512x512, 64 jobs (GPU)

Each sweep runs through sdflow's real command path (``sdflow.cli.main`` in this process: Hydra's
multirun, every job's folder, .hydra files, log and PNG), after a warm-up sweep that loads the weights,
so the figures compare the work of a sweep, not the loading. diffusers gets the very modules sdflow's
cache holds and makes the same images in hand-made batches of the fused batch size. Also printed: the
batch-1 ratio (bench/text2img_vs_diffusers.py) and the start-up of a one-image ``sdflow`` command.
Goals: CPU tiny fused >= 3x the basic launcher; GPU fused eager >= 0.95x diffusers at the same batch,
compiled >= 7 images/s on an H100/H200, batch-1 ratio <= 1.02.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from text2img_vs_diffusers import build_sd15_shaped, sync  # noqa: E402

from sdflow import cli  # noqa: E402
from sdflow.engine import process_cache  # noqa: E402


def sdflow_sweep(overrides: list[str], folder: Path, launcher: str, compile_: bool) -> float:
    """Seconds for one ``sdflow -m`` sweep, run in this process through the CLI (warm component cache)."""
    from hydra.core.global_hydra import GlobalHydra

    argv = ["sdflow", "-m", *overrides, f"hydra.sweep.dir={folder}", f"hydra/launcher={launcher}", "grid=false",
            f"runtime.compile={str(compile_).lower()}"]
    GlobalHydra.instance().clear()
    saved, sys.argv = sys.argv, argv
    try:
        start = time.perf_counter()
        cli.main()
        sync(os.environ.get("BENCH_DEVICE", "cpu"))
        return time.perf_counter() - start
    finally:
        sys.argv = saved


def diffusers_batches(jobs: int, batch: int, prompt: str, steps: int, guidance: float, size: int, pipe) -> float:
    """Seconds for the same images through the diffusers pipeline, ``batch`` at a time."""
    start = time.perf_counter()
    for first in range(0, jobs, batch):
        seeds = list(range(first, min(jobs, first + batch)))
        pipe(prompt=[prompt] * len(seeds), num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
             generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt")
    sync(os.environ.get("BENCH_DEVICE", "cpu"))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd15-shapes", action="store_true", help="SD1.5-shaped random fp16 weights at 512x512")
    parser.add_argument("--jobs", type=int, help="sweep size (default 16 on CPU, 64 with --sd15-shapes)")
    parser.add_argument("--batch", type=int, help="runtime.max_batch and diffusers' batch (default 8 CPU, 16 GPU)")
    parser.add_argument("--steps", type=int, help="default 20 (tiny) or 30 (sd15-shapes)")
    parser.add_argument("--compile", action="store_true", help="also time runtime.compile=true and a compiled UNet")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    gpu = args.sd15_shapes and torch.cuda.is_available()
    device, dtype = ("cuda", "float16") if gpu else ("cpu", "float32")
    os.environ["BENCH_DEVICE"] = device
    jobs = args.jobs or (64 if args.sd15_shapes else 16)
    batch = args.batch or (16 if gpu else 8)
    steps = args.steps or (30 if args.sd15_shapes else 20)
    size = 512 if args.sd15_shapes else 64
    guidance, prompt = 7.5, "a small red circle on the left, blue background"
    work = Path(tempfile.mkdtemp(prefix="sdflow-bench-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # weights, sweeps and PNGs: nothing is kept
    # runtime.output_cache=false: each sweep runs its nodes (the same seeds again would reuse every output)
    overrides = [f"steps={steps}", "scheduler=euler", f"guidance={guidance}", f"prompt=\"{prompt}\"",
                 f"runtime.device={device}", f"runtime.dtype={dtype}", f"runtime.max_batch={batch}",
                 f"width={size}", f"height={size}", "runtime.output_cache=false"]
    if args.sd15_shapes:
        overrides += ["model=sd15", f"model.path={build_sd15_shaped(work / 'sd15')}"]
    else:
        overrides += ["model=tiny"]
    seeds = "seed=" + ",".join(map(str, range(jobs)))

    figures: dict = {"device": torch.cuda.get_device_name() if gpu else "cpu", "jobs": jobs, "batch": batch,
                     "steps": steps, "size": size, "model": "sd15-shaped fp16" if args.sd15_shapes else "tiny fp32"}
    sdflow_sweep(overrides + ["seed=0,1"], work / "warm", "sdflow", False)  # loads every weight once
    figures["fused_s"] = sdflow_sweep(overrides + [seeds], work / "fused", "sdflow", False)
    figures["basic_s"] = sdflow_sweep(overrides + [seeds], work / "basic", "basic", False)

    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    cache = process_cache()
    source = next(k[0] for k in cache.loaded_keys if k[1] == "unet")
    part = {k[1]: cache.get(k, lambda: None) for k in cache.keys() if k[0] == source}
    pipe = StableDiffusionPipeline(unet=part["unet"], vae=part["vae"], text_encoder=part["text_encoder"],
                                   tokenizer=part["tokenizer"],
                                   scheduler=EulerDiscreteScheduler.from_config(part["scheduler"].config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    diffusers_batches(batch, batch, prompt, steps, guidance, size, pipe)  # warm-up
    figures["diffusers_s"] = diffusers_batches(jobs, batch, prompt, steps, guidance, size, pipe)
    if args.compile:
        figures["fused_compiled_first_s"] = sdflow_sweep(overrides + [seeds], work / "compiled1", "sdflow", True)
        figures["fused_compiled_s"] = sdflow_sweep(overrides + [seeds], work / "compiled2", "sdflow", True)
        pipe.unet = torch.compile(pipe.unet)
        diffusers_batches(batch, batch, prompt, steps, guidance, size, pipe)
        figures["diffusers_compiled_s"] = diffusers_batches(jobs, batch, prompt, steps, guidance, size, pipe)

    one = subprocess.run([sys.executable, str(ROOT / "bench" / "text2img_vs_diffusers.py"), "--json",
                          str(work / "one.json"), "--steps", str(steps)] + (["--sd15-shapes"] if args.sd15_shapes else []),
                         capture_output=True, text=True)
    if one.returncode == 0:
        figures["batch1_ratio"] = json.loads((work / "one.json").read_text())["ratio"]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sdflow.cli", *overrides, "seed=0", f"hydra.run.dir={work / 'single'}"],
                   capture_output=True, text=True, check=True)
    figures["one_image_command_s"] = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sdflow.cli", "--help"], capture_output=True, check=True)
    figures["help_s"] = time.perf_counter() - start

    rate = {k[:-2]: jobs / v for k, v in figures.items() if k.endswith("_s") and k not in (
        "one_image_command_s", "help_s", "fused_compiled_first_s")}
    print(f"sweep of {jobs} one-image jobs on {figures['device']} ({figures['model']}, {size}x{size}, {steps} Euler "
          f"steps, batch {batch}):")
    for name, value in rate.items():
        print(f"  {name:<20} {value:8.2f} images/s   ({figures[name + '_s']:.2f} s)")
    print(f"  fused / basic launcher    = {rate['fused'] / rate['basic']:.2f}x   (CPU goal >= 3x)")
    print(f"  fused / diffusers batched = {rate['fused'] / rate['diffusers']:.2f}x   (GPU goal >= 0.95x)")
    if "batch1_ratio" in figures:
        print(f"  batch-1 ratio sdflow/diffusers = {figures['batch1_ratio']:.3f}   (goal <= 1.02)")
    print(f"  one-image sdflow command: {figures['one_image_command_s']:.1f} s from start to PNG; "
          f"sdflow --help: {figures['help_s']:.2f} s")
    if args.json:
        args.json.write_text(json.dumps({**figures, "images_per_s": rate}, indent=2))


if __name__ == "__main__":
    main()
