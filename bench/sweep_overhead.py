"""What a sweep costs beyond its images: per-job overhead, and what the output cache saves on a chain sweep.

    python bench/sweep_overhead.py                 # 64 one-image jobs (tiny model, 1 step, 32x32); chain sweeps
    python bench/sweep_overhead.py --repeats 5 --json figures.json

Per-job overhead = (wall of ``sdflow -m seed=0,...,63`` - wall of the one job ``sdflow seed=[0,...,63]``) / 64:
both whole commands (start-up, imports and the grid included), the same 64 images. Printed for sdflow's fused
launcher and for ``hydra/launcher=basic``.

Chain reuse: ``sdflow -m workflow=chain strength=...`` (4 jobs) with the output cache and without it
(``runtime.output_cache=false``); the ratio without / with. These sweeps run in this process through the
command's own path (``sdflow.cli.main``) after a warm-up that loaded every weight, each starting with an empty
output cache: the figure is the sweep's work, not the interpreter's start-up, which the cache cannot touch.
"A long first stage": text2img 150 steps, img2img 8-30 (strength 0.05-0.2 of 150), x4 upscale 1 step.

Every measurement runs --repeats times, the commands taking turns (so a slow spell of this shared machine hits
them alike), and the median is printed. Goals (this CPU): overhead <= 20 ms a job; the chain >= 2.5x.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOBS = 64
TINY = ["model=tiny", "steps=1", "width=32", "height=32"]
SEEDS = ",".join(map(str, range(JOBS)))
COMMANDS = {
    "one job": [*TINY, f"seed=[{SEEDS}]"],
    "fused sweep": ["-m", *TINY, f"seed={SEEDS}"],
    "basic sweep": ["-m", *TINY, f"seed={SEEDS}", "hydra/launcher=basic"],
}
# The chain: text2img (steps), img2img (steps x strength), x4 upscale (upscale_steps) of a 64 px image.
CHAINS = {
    "long first stage": ["model=tiny", "workflow=chain", "steps=150", "upscale_steps=1", "strength=0.05,0.1,0.15,0.2"],
    "strength 0.3-0.9": ["model=tiny", "workflow=chain", "steps=20", "upscale_steps=1", "strength=0.3,0.5,0.7,0.9"],
}


def wall(args: list[str], folder: Path) -> float:
    """Seconds of one whole ``sdflow`` command, in a folder of its own."""
    folder.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sdflow.cli", *args, "hydra.run.dir=out", "hydra.sweep.dir=out"], cwd=folder,
                   env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - start


def sweep_here(args: list[str], folder: Path) -> float:
    """Seconds of one ``sdflow -m`` sweep run in this process (warm component cache, empty output cache)."""
    from hydra.core.global_hydra import GlobalHydra

    from sdflow.cli import main as sdflow
    from sdflow.engine import process_output_cache

    process_output_cache().clear()
    GlobalHydra.instance().clear()
    saved, sys.argv = sys.argv, ["sdflow", "-m", *args, f"hydra.sweep.dir={folder}", "grid=false"]
    try:
        start = time.perf_counter()
        sdflow()
        return time.perf_counter() - start
    finally:
        sys.argv = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command, taking turns (default 5)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--no-chain", action="store_true", help="per-job overhead only")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sdflow-bench-"))
    try:
        wall(COMMANDS["one job"], work / "warm-up")  # builds the tiny model once, fills the OS file cache
        times: dict[str, list[float]] = {name: [] for name in COMMANDS}
        for repeat in range(args.repeats):
            for number, (name, command) in enumerate(COMMANDS.items()):
                times[name].append(wall(command, work / f"{repeat}-{number}"))
        os.environ["OMP_NUM_THREADS"] = "1"
        if not args.no_chain:
            sweep_here(CHAINS["strength 0.3-0.9"], work / "chain-warm-up")  # loads the chain's weights once
        runs = 0
        for repeat in range(0 if args.no_chain else args.repeats):
            for kind, chain in CHAINS.items():
                for cached in (True, False):
                    runs += 1
                    name = f"chain, {kind}, {'cache' if cached else 'no cache'}"
                    switch = f"runtime.output_cache={str(cached).lower()}"
                    times.setdefault(name, []).append(sweep_here(chain + [switch], work / f"chain-{runs}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    figures = {
        "median_s": median, "runs_s": times, "cpu": os.cpu_count(),
        "overhead_ms_per_job": {launcher: 1000 * (median[f"{launcher} sweep"] - median["one job"]) / JOBS
                                for launcher in ("fused", "basic")},
        "chain_reuse": {kind: median[f"chain, {kind}, no cache"] / median[f"chain, {kind}, cache"]
                        for kind in CHAINS if f"chain, {kind}, cache" in median},
    }
    print(f"{JOBS} one-image jobs (tiny model, 1 step, 32x32), medians of {args.repeats} runs taking turns:")
    for name in ("one job", "fused sweep", "basic sweep"):
        print(f"  {name:<13} {median[name]:6.2f} s")
    for launcher, value in figures["overhead_ms_per_job"].items():
        goal = "   (goal <= 20 ms)" if launcher == "fused" else ""
        print(f"  per-job overhead, {launcher:<5} {value:6.1f} ms{goal}")
    print("chain sweeps (text2img -> img2img -> x4), 4 strengths, with the output cache and without:")
    for kind, ratio in figures["chain_reuse"].items():
        goal = "   (goal >= 2.5x)" if kind == "long first stage" else ""
        print(f"  {kind:<17} {median[f'chain, {kind}, cache']:6.2f} s with, {median[f'chain, {kind}, no cache']:6.2f} s "
              f"without: {ratio:.2f}x{goal}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
