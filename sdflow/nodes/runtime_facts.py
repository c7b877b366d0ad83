"""The config's runtime checked before anything loads, like a workflow's fields, in two parts by where each holds.

``check_runtime``: its values (device name, dtype, output cache), the same on every machine: asked before any
job is sent anywhere. ``check_hardware``: whether this machine can run it (the GPU is there, takes the dtype,
has room for the weights): asked where the job runs, by the command for a local run and by each worker of a Ray
or Slurm sweep, whose driver (a login node, a CPU head) need have no GPU.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..engine import Problem
from .load_model import DTYPES
from .offload import OFFLOAD_MODES

DEVICE_KINDS = ("cpu", "cuda", "mps")


def _problem(problems: list[Problem], key: str, message: str) -> None:
    problems.append(Problem("config", None, f"runtime.{key}", message))


def check_runtime(runtime: Mapping) -> list[Problem]:
    """What is wrong with the values of ``runtime`` (the config's runtime group), on any machine."""
    problems: list[Problem] = []
    device, dtype = str(runtime.get("device", "cpu")), str(runtime.get("dtype", "float32"))
    slicing = runtime.get("attention_slicing", False)
    if not (isinstance(slicing, bool) or slicing in ("auto", "max") or
            (isinstance(slicing, int) and slicing >= 1)):
        _problem(problems, "attention_slicing", f"expected false, true, auto, max or a slice size >= 1, given {slicing!r}")
    for switch in ("output_cache", "vae_slicing", "vae_tiling"):
        if not isinstance(runtime.get(switch, False), bool):
            _problem(problems, switch, f"expected true or false, given {runtime.get(switch)!r}")
    offload = runtime.get("offload") or "none"
    if offload not in OFFLOAD_MODES:
        _problem(problems, "offload", f"expected one of {', '.join(OFFLOAD_MODES)}, given {offload!r}")
    elif offload != "none" and runtime.get("compile", False) not in (False, None, "false", "False"):
        # accelerate's hooks move weights inside the forward: torch.compile would trace around them, or not at all
        _problem(problems, "offload", f"runtime.offload={offload} cannot be combined with runtime.compile; "
                 "choose one (offload saves GPU memory, compile saves time)")
    budget = runtime.get("output_cache_mb")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < 0):
        _problem(problems, "output_cache_mb", f"expected a number of MiB >= 0 (or null: no bound), given {budget!r}")
    cap = runtime.get("max_pixels")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 64 * 64):
        _problem(problems, "max_pixels", f"expected a number of pixels >= 4096 (64x64), or null: no limit; given {cap!r}")
    if dtype not in DTYPES:
        _problem(problems, "dtype", f"expected one of {', '.join(DTYPES)}, given {dtype!r}")
    kind, _, index = device.partition(":")
    if kind not in DEVICE_KINDS or (index and not index.isdigit()):
        _problem(problems, "device", f"expected cpu, cuda, cuda:N or mps, given {device!r}")
    return problems


def check_hardware(runtime: Mapping, weight_bytes: int | None = None) -> list[Problem]:
    """What stops this machine from running ``runtime``: its GPU missing, the dtype unsupported, less free GPU
    memory than ``weight_bytes`` (what the weights take at least, once loaded). Asking imports torch (seconds), so
    only a runtime that names a GPU asks."""
    problems: list[Problem] = []
    device, dtype = str(runtime.get("device", "cpu")), str(runtime.get("dtype", "float32"))
    kind, _, index = device.partition(":")
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            build = " (this torch is a CPU-only build)" if torch.version.cuda is None else ""
            _problem(problems, "device", f"runtime.device is '{device}' (runtime=cuda), but torch {torch.__version__} "
                     f"finds no CUDA GPU on this machine{build}; run with runtime=cpu")
            return problems
        if index and int(index) >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            _problem(problems, "device", f"runtime.device is '{device}', but this machine has {count} CUDA GPU"
                     f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")
            return problems
        if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            _problem(problems, "dtype", f"{torch.cuda.get_device_name(device)} does not compute in bfloat16; run with "
                     "runtime.dtype=float16")
        free, _ = torch.cuda.mem_get_info(device)
        if runtime.get("offload") == "sequential":  # (one layer's weights at a time: no whole model need fit)
            weight_bytes = None
        if weight_bytes and weight_bytes > free:
            _problem(problems, "device", f"{torch.cuda.get_device_name(device)} ({device}) has {free / 2**30:.1f} "
                     f"GiB free, and the models' weights take at least {weight_bytes / 2**30:.1f} GiB"
                     + ("; load them in float16 (runtime.dtype=float16)" if dtype == "float32" else
                        "; keep them in CPU memory between uses (runtime.offload=model or sequential)"))
    elif kind == "mps":
        import torch

        if not torch.backends.mps.is_available():
            _problem(problems, "device", f"runtime.device is '{device}', but torch finds no Apple GPU (MPS) on this "
                     "machine; run with runtime=cpu")
    return problems
