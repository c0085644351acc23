"""Loaded pipelines kept between calls, within a memory limit: what lets a server answer its second
job without loading the model again.

A :class:`PipelineCache` is a value the caller owns and passes to
:func:`~kinema.generation.generate` (``pipelines=``); nothing is cached behind anyone's back. A
pipeline is keyed by what its loading depends on (the model's folder, device, dtype and
quantisation); when a new one would take the cache past ``max_bytes`` (its weights' bytes), the
least recently used ones are dropped first. Pipelines loaded under a memory plan (offload) are
not kept: their plan was sized for one request.
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable


def pipeline_bytes(pipe: Any) -> int:
    """Bytes of a loaded pipeline's weights (parameters and buffers of all its modules)."""
    from .memory import pipeline_modules

    seen: set[int] = set()
    total = 0
    for module in pipeline_modules(pipe).values():
        for t in list(module.parameters()) + list(module.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


class PipelineCache:
    """Up to ``max_bytes`` of loaded pipelines, least recently used dropped first (0: keep none).

    Thread-safe; one load at a time (two jobs asking for the same model load it once).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0; got {max_bytes}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # pipelines loaded through the cache (a hit loads none)
        self.hits = 0

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        """The pipeline for ``key``, loading it with ``load()`` when it is not held."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key][0]
            pipe = load()
            self.loads += 1
            size = pipeline_bytes(pipe)
            if size <= self.max_bytes:
                while self._items and self.held_bytes + size > self.max_bytes:
                    self._items.popitem(last=False)
                self._items[key] = (pipe, size)
                gc.collect()  # a dropped pipeline's weights go now, before the new job's activations
            return pipe

    def bytes_of(self, key: Hashable) -> int:
        """Bytes of the pipeline kept under ``key`` (0: none kept)."""
        item = self._items.get(key)
        return item[1] if item is not None else 0

    @property
    def held_bytes(self) -> int:
        return sum(size for _, size in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
        gc.collect()
