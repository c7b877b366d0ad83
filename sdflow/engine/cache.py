"""The component cache: one per process, so chained workflows and sweep jobs load each weight once.

Keys are (source, component, dtype, device). The cache knows nothing about what it holds beyond how
many bytes its tensors take; loaders are passed in by the caller.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable

log = logging.getLogger("sdflow.cache")


@dataclass
class CacheStats:
    """What the cache has done: loads (misses), hits, evictions and bytes held now."""

    loads: int = 0
    hits: int = 0
    evictions: int = 0
    bytes_held: int = 0

    def __str__(self) -> str:
        return (f"{self.loads} loads, {self.hits} hits, {self.evictions} evictions, "
                f"{self.bytes_held / 2**20:.1f} MiB held")


def size_in_bytes(obj: Any) -> int:
    """Bytes held by an object's tensors (parameters and buffers of a torch module); 0 for the rest."""
    total = 0
    params = getattr(obj, "parameters", None)
    buffers = getattr(obj, "buffers", None)
    if callable(params):
        total += sum(p.numel() * p.element_size() for p in params())
    if callable(buffers):
        total += sum(b.numel() * b.element_size() for b in buffers())
    return total


class ComponentCache:
    """Load-once store of model components, least recently used evicted past ``budget_bytes``."""

    def __init__(self, budget_bytes: int | None = None):
        self.budget_bytes = budget_bytes
        self.stats = CacheStats()
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self.loaded_keys: list[Hashable] = []  # every key ever loaded, in order: tests and logs read it

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        """Return the component under ``key``, calling ``load()`` only if it is not held."""
        if key in self._entries:
            self._entries.move_to_end(key)
            self.stats.hits += 1
            log.debug("cache hit %s", key)
            return self._entries[key][0]
        component = load()
        size = size_in_bytes(component)
        self._entries[key] = (component, size)
        self.stats.loads += 1
        self.stats.bytes_held += size
        self.loaded_keys.append(key)
        log.info("loaded %s (%.1f MiB)", key, size / 2**20)
        self._evict_over_budget(keep=key)
        return component

    def key_of(self, component: Any) -> Hashable | None:
        """The key ``component`` (this very object) is held under, or None: for values derived from a component."""
        return next((key for key, (held, _) in self._entries.items() if held is component), None)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[Hashable]:
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.stats.bytes_held = 0

    def _evict_over_budget(self, keep: Hashable) -> None:
        if self.budget_bytes is None:
            return
        while self.stats.bytes_held > self.budget_bytes and len(self._entries) > 1:
            oldest = next(iter(self._entries))
            if oldest == keep:
                break
            _, size = self._entries.pop(oldest)
            self.stats.bytes_held -= size
            self.stats.evictions += 1
            log.info("evicted %s (%.1f MiB) to stay under the %.1f MiB budget",
                     oldest, size / 2**20, self.budget_bytes / 2**20)


@functools.cache
def process_cache() -> ComponentCache:
    """The one cache of this process, shared by every workflow run and sweep job in it."""
    return ComponentCache()
