"""Stopping a running prediction's thread, except inside the work that must not stop half-way.

A cancel raises PredictionCancelled in the prediction's thread (CPython's PyThreadState_SetAsyncExc,
as Cog's runtime stops a synchronous predict()), so every `finally` runs. It is raised at most
once per cancel, at the thread's next check of its pending calls: on CPython 3.11, on entering a
Python function, after a call returns and at a loop's back edge, never between two other
instructions. Loading or evicting a model must not be cut in the middle (the resident models'
records would be left half-updated for every later prediction): that code runs under
`uninterrupted()`, and a cancel that arrives meanwhile is raised when it ends.

What a prediction thread may do with a lock another thread also takes (docs/batching.md, "Cancels
and locks", says why each is safe):
- `with lock:` on a `threading.Lock` or `RLock` itself (its enter and exit are C: the cancel lands
  before the lock is taken or inside the block, never between);
- anything inside `uninterrupted()` (a Condition, an Event, bookkeeping that must stay whole);
- the batcher's Turn, whose acquire and release are written for it (musicgen.tokens.batching).
It never waits on a threading.Event or Condition outside `uninterrupted()`: their Python code holds
an inner lock that a cancel landing there would leave taken, and the thread that sets the event
would then wait for ever.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator

from musicgen.errors import PredictionCancelled

_lock = threading.Lock()
_depth: dict[int, int] = {}  # thread -> how many uninterrupted() sections it is inside
_cancelled: set[int] = set()  # threads asked to stop (and not yet cleared): each is sent one exception


def cancel(thread: int) -> None:
    """Stop `thread` now, or when its uninterrupted section ends. A second cancel before clear()
    does nothing: the first one's clean-up is never interrupted by another."""
    with _lock:
        if thread in _cancelled:
            return
        _cancelled.add(thread)
        if not _depth.get(thread):
            _set_async_exception(thread, PredictionCancelled)


def check() -> None:
    """Raise PredictionCancelled now if this thread has been asked to stop (outside uninterrupted()).

    Called by the loops a prediction spends its time in (each decode step, each poll of a wait):
    the one exception a cancel sends can be lost where Python ignores exceptions (a weakref
    callback or a __del__ it lands in prints "Exception ignored" and goes on), and the prediction
    then stops here instead of running to its end."""
    thread = threading.get_ident()
    if thread not in _cancelled or _depth.get(thread):
        return
    with _lock:
        _set_async_exception(thread, None)  # one still on its way is raised here instead, not twice
    raise PredictionCancelled


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
