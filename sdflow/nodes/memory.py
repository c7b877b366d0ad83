"""What a node does when the GPU runs out of memory: free torch's cached blocks, retry smaller, and say so.

A retry never changes a pixel silently: each fallback is recorded in ``ctx.record["fallbacks"]`` (written
into every PNG's metadata and the run's manifest.json), naming the node.
"""

from __future__ import annotations

import gc
import logging

from ..engine import RunContext

log = logging.getLogger("sdflow.memory")


def free_memory() -> None:
    """Release what the failed try left behind, so the smaller retry has the memory."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def record_fallback(ctx: RunContext, message: str) -> None:
    text = f"{ctx.node_id}: {message}"
    log.warning("%s", text)
    ctx.record.setdefault("fallbacks", []).append(text)


def rows(tensor, start: int, stop: int, batch: int):
    """Rows ``start:stop`` of a tensor with one row per image of a ``batch``; one shared row (or None) as is."""
    return tensor if tensor is None or batch == 1 or tensor.shape[0] != batch else tensor[start:stop]
