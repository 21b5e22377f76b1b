"""A small thread-safe least-recently-used map, for the content-keyed caches of every layer.

The TDX verifier keeps decoded chains and signed collateral by their exact bytes; the appraisal
keeps what depends only on a stored version (a policy's text, a reference-values document, a
firmware log) between calls.  The keys are that content or its digest, so a new version is a new
entry and an old one ages out.  ``None`` is never stored (it means "absent"), and nothing is
stored for content that failed its checks: callers put only what they built successfully.

A map may also bound the total weight of its entries (``max_weight``; each :meth:`LRU.put` says what its
entry weighs, e.g. the characters of the text it keeps): the least recently used entries go until the rest
fit, and an entry heavier than the whole bound is not stored at all.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

__all__ = ["LRU"]

V = TypeVar("V")


class LRU(Generic[V]):
    """At most ``size`` entries (and ``max_weight`` in all, when given); the least recently used one goes
    first.  Every method takes the lock."""

    def __init__(self, size: int, *, max_weight: int | None = None) -> None:
        if size < 1:
            raise ValueError("an LRU needs room for one entry")
        self.size = size
        self.max_weight = max_weight
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._weights: dict[Hashable, int] = {}
        self._weight = 0
        self._lock = threading.Lock()

    @property
    def weight(self) -> int:
        """The total weight of the entries held."""
        with self._lock:
            return self._weight

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: V, weight: int = 0) -> None:
        """Keep ``value`` under ``key`` (replacing what was there); ``weight`` counts against ``max_weight``."""
        with self._lock:
            self._weight -= self._weights.pop(key, 0)
            self._items.pop(key, None)
            if self.max_weight is not None and weight > self.max_weight:
                return  # it would push out everything and still not fit
            self._items[key] = value
            self._weights[key] = weight
            self._weight += weight
            while len(self._items) > self.size or (self.max_weight is not None and self._weight > self.max_weight):
                old, _ = self._items.popitem(last=False)
                self._weight -= self._weights.pop(old, 0)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._weights.clear()
            self._weight = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
