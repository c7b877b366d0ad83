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


# How allocation failures read when they do not arrive as torch.OutOfMemoryError: CUDA's own message raised as a
# RuntimeError (older paths, custom kernels), cuDNN's and cuBLAS's workspace allocations.
OUT_OF_MEMORY_MESSAGES = ("out of memory", "CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error``, or the exception it was raised from, is a device running out of memory."""
    import torch

    cause = error.__cause__ or error
    return isinstance(cause, torch.OutOfMemoryError) or any(m in str(cause) for m in OUT_OF_MEMORY_MESSAGES)
