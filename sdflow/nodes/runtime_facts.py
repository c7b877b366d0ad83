"""check_runtime: the config's runtime (device, dtype, output cache) checked before anything loads, like a workflow's fields."""

from __future__ import annotations

from collections.abc import Mapping

from ..engine import Problem
from .load_model import DTYPES

DEVICE_KINDS = ("cpu", "cuda", "mps")


def check_runtime(runtime: Mapping) -> list[Problem]:
    """What is wrong with ``runtime`` (the config's runtime group) that would otherwise fail only once models load.

    Asking whether a GPU is there imports torch (seconds), so it is asked only when the runtime names one.
    """
    problems: list[Problem] = []

    def problem(key: str, message: str) -> None:
        problems.append(Problem("config", None, f"runtime.{key}", message))

    device, dtype = str(runtime.get("device", "cpu")), str(runtime.get("dtype", "float32"))
    if not isinstance(runtime.get("output_cache", True), bool):
        problem("output_cache", f"expected true or false, given {runtime.get('output_cache')!r}")
    budget = runtime.get("output_cache_mb")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < 0):
        problem("output_cache_mb", f"expected a number of MiB >= 0 (or null: no bound), given {budget!r}")
    if dtype not in DTYPES:
        problem("dtype", f"expected one of {', '.join(DTYPES)}, given {dtype!r}")
    kind, _, index = device.partition(":")
    if kind not in DEVICE_KINDS or (index and not index.isdigit()):
        problem("device", f"expected cpu, cuda, cuda:N or mps, given {device!r}")
    elif kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            build = " (this torch is a CPU-only build)" if torch.version.cuda is None else ""
            problem("device", f"runtime.device is '{device}' (runtime=cuda), but torch {torch.__version__} finds no "
                    f"CUDA GPU on this machine{build}; run with runtime=cpu")
        elif index and int(index) >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            problem("device", f"runtime.device is '{device}', but this machine has {count} CUDA GPU"
                    f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")
    elif kind == "mps":
        import torch

        if not torch.backends.mps.is_available():
            problem("device", f"runtime.device is '{device}', but torch finds no Apple GPU (MPS) on this machine; "
                    "run with runtime=cpu")
    return problems
