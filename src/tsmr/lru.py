"""A small thread-safe least-recently-used map, for the content-keyed caches of every layer.

The TDX verifier keeps decoded chains and signed collateral by their exact bytes; the appraisal
keeps what depends only on a stored version (a policy's text, a reference-values document, a
firmware log) between calls.  The keys are that content or its digest, so a new version is a new
entry and an old one ages out.  ``None`` is never stored (it means "absent"), and nothing is
stored for content that failed its checks: callers put only what they built successfully.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

__all__ = ["LRU"]

V = TypeVar("V")


class LRU(Generic[V]):
    """At most ``size`` entries; the least recently used one goes first.  Every method takes the lock."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("an LRU needs room for one entry")
        self.size = size
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
