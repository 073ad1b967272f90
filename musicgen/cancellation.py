"""Stopping a running prediction's thread, except inside the work that must not stop half-way.

A cancel raises PredictionCancelled in the prediction's thread at its next Python instruction
(CPython's PyThreadState_SetAsyncExc, as Cog's runtime stops a synchronous predict()), so every
`finally` runs. Loading or evicting a model must not be cut in the middle (the resident models'
records would be left half-updated for every later prediction): that code runs under
`uninterrupted()`, and a cancel that arrives meanwhile is raised when it ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator

from musicgen.errors import PredictionCancelled

_lock = threading.Lock()
_depth: dict[int, int] = {}  # thread -> how many uninterrupted() sections it is inside
_cancelled: set[int] = set()  # threads asked to stop (and not yet cleared)


def cancel(thread: int) -> None:
    """Stop `thread` now, or when its uninterrupted section ends."""
    with _lock:
        _cancelled.add(thread)
        if not _depth.get(thread):
            _set_async_exception(thread, PredictionCancelled)


def clear(thread: int) -> None:
    """Forget a cancel of `thread` that came too late (its work is over)."""
    with _lock:
        _cancelled.discard(thread)
        _set_async_exception(thread, None)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Run the block whole: a cancel of this thread waits until it ends, then is raised."""
    thread = threading.get_ident()
    with _lock:
        if thread in _cancelled:  # cancelled before the block began: do not begin it
            _set_async_exception(thread, None)
            raise PredictionCancelled
        _depth[thread] = _depth.get(thread, 0) + 1
    try:
        yield
    finally:
        with _lock:
            _depth[thread] -= 1
            stop = not _depth[thread] and thread in _cancelled
            if not _depth[thread]:
                del _depth[thread]
        if stop:
            raise PredictionCancelled


def _set_async_exception(thread: int, exception: type[BaseException] | None) -> None:
    """CPython's PyThreadState_SetAsyncExc: raise `exception` in `thread` (None: clear a pending one)."""
    pending = None if exception is None else ctypes.py_object(exception)  # None is passed as NULL
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), pending)
