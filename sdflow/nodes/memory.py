"""What a node does when the GPU runs out of memory: free torch's cached blocks, retry smaller, and say so.

A retry never changes a pixel silently: each fallback is a typed event in the run record's ``fallbacks`` (written
into every PNG's metadata and the run's manifest.json), naming the node.
"""

from __future__ import annotations

import gc
import logging

from ..engine import RunContext, process_output_cache

log = logging.getLogger("sdflow.memory")


def free_memory() -> None:
    """Release what the failed try left behind, and the outputs kept for reuse, so the smaller retry has the memory."""
    import torch

    process_output_cache().clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def record_fallback(ctx: RunContext, kind: str, message: str) -> None:
    """Say that the running node fell back (``kind``: ``batch_split``, ``tiled_decode``, ``float32_retry``)."""
    log.warning("%s", ctx.record.fallback(ctx.node_id, kind, message))


def rows(tensor, start: int, stop: int, batch: int):
    """Rows ``start:stop`` of a tensor with one row per image of a ``batch``; one shared row (or None) as is."""
    return tensor if tensor is None or batch == 1 or tensor.shape[0] != batch else tensor[start:stop]


# How a device running out of memory reads when it does not arrive as torch.OutOfMemoryError: CUDA's and ROCm's
# message raised as a RuntimeError (older paths, custom kernels, CUDA errors reported later), cuDNN's and
# cuBLAS's workspace allocations, Apple's MPS backend, and the CPU allocator (a CPU run, or offloaded weights).
OUT_OF_MEMORY_MESSAGES = (
    "CUDA out of memory", "CUDA error: out of memory", "HIP out of memory", "CUDNN_STATUS_ALLOC_FAILED",
    "CUBLAS_STATUS_ALLOC_FAILED", "MPS backend out of memory", "DefaultCPUAllocator: can't allocate memory",
    "DefaultCPUAllocator: not enough memory",
)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error``, or the exception it was raised from, is a device or the host running out of memory:
    the one test behind every out-of-memory fallback (batch halves, tiled decode, a fused batch split)."""
    import torch

    for candidate in (error, error.__cause__):
        if isinstance(candidate, (torch.OutOfMemoryError, MemoryError)):
            return True
        if isinstance(candidate, RuntimeError) and any(m in str(candidate) for m in OUT_OF_MEMORY_MESSAGES):
            return True
    return False
