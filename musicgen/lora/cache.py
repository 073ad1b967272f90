"""Adapters ready on the serving device, by their file's digest: a bounded, least-recently-used cache.

A request's adapter is read and checked once per distinct file; its tensors, in the step's
device and dtype, stay here until the bytes of the cached adapters pass the limit (the
MUSICGEN_LORA_CACHE_MB setting) and it is the least recently used. A running request keeps its
own reference: dropping an entry never pulls an adapter from under a request.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from musicgen.cancellation import uninterrupted
from musicgen.tokens.adapters import LowRank


class AdapterCache:
    """LowRank adapters by digest, at most `limit` bytes of them (one larger than that is still
    used, and kept until the next one arrives)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._entries: collections.OrderedDict[str, LowRank] = collections.OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: str, make: Callable[[], LowRank]) -> LowRank:
        """The adapter of `digest`, made by make() when it is not here."""
        with uninterrupted(), self._lock:
            entry = self._entries.get(digest)
            if entry is not None:
                self._entries.move_to_end(digest)
                return entry
        entry = make()  # outside the lock: it copies tensors to the device
        with uninterrupted(), self._lock:
            self._entries[digest] = entry
            self._entries.move_to_end(digest)
            while len(self._entries) > 1 and self.nbytes > self.limit:
                self._entries.popitem(last=False)
        return entry
