"""The models' turn, and the watch on the batched path's progress (musicgen.tokens.batching uses both).

The Turn: one prediction at a time in the work outside the batched steps (loading, conditions,
prefill, decoding alone, EnCodec), so that torch's global random state is only ever drawn by the
prediction that seeded it. Written so that a cancel landing anywhere never leaves it taken
(musicgen.cancellation; docs/batching.md, "Cancels and locks").

The Watch: when the batched path last moved. A prediction waiting for the turn or for its tokens
gives up with ServerStalled once nothing has moved for MUSICGEN_STALL_SECONDS.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from musicgen import cancellation
from musicgen.errors import ServerStalled
from musicgen.tokens.progress import STEPS, record

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05  # a waiting thread wakes this often, so that a cancel reaches it
T = TypeVar("T")


class Watch:
    """When the batched path last moved: a step of the batch, or the turn handed over; a step a
    prediction takes alone under the turn counts too (progress.STEPS). A prediction waiting for
    the turn or for its tokens gives up with ServerStalled once nothing has moved for
    `limit` seconds (MUSICGEN_STALL_SECONDS), instead of waiting for ever."""

    def __init__(self, limit: float):
        self.limit = limit
        self.handed_over = self.stepped = time.monotonic()
        self._reported = 0.0  # the stall already logged (its last sign of progress)

    def check(self, since: float, describe: Callable[[], str]) -> None:
        """ServerStalled when nothing has moved for `limit` seconds after `since` (a monotonic
        time: the last progress the waiter counts). Logged once per stall, as an error naming
        what holds the path and who waits (`describe()`)."""
        idle = time.monotonic() - since
        if idle <= self.limit:
            return
        what = describe()
        if self._reported != since:
            self._reported = since
            log.error(
                "the batched path made no progress for %.0f s (MUSICGEN_STALL_SECONDS=%g): %s", idle, self.limit, what
            )
        raise ServerStalled(
            f"this server's decoding made no progress for {idle:.0f} s ({what}); this prediction was not run. "
            f"Try again later or on another replica; the operator should restart this server if it goes on."
        )


class Turn:
    """One prediction at a time in the work outside the batched steps; given up while it waits for
    its tokens. Waiting for it can be cancelled, and gives up when the path stalls (Watch).

    Cancel-safe (musicgen.cancellation; docs/batching.md, "Cancels and locks"): the lock is a C
    RLock, which knows its owner; `run()` takes it inside the `try` whose `finally` releases it
    (a C call, the first of the `finally`, raising RuntimeError when this thread does not hold it),
    so a cancel landing anywhere leaves it free or held by a thread that is about to release it.
    There is no context manager: its `__enter__` returning would be one more place for a cancel to
    land between taking the lock and the `try` that gives it back.
    """

    def __init__(self, watch: Watch):
        self._lock = threading.RLock()
        self.watch = watch
        self._holder: tuple[int, str, str] = (0, "", "")  # (thread, label, who) holding it: the stall's log line
        self._waiting: dict[int, str] = {}  # thread -> what it does, likewise

    def run(self, work: Callable[[], T], label: str) -> T:
        """work() holding the turn; `label` says what the prediction does (the stall's log line)."""
        me = threading.get_ident()
        try:
            self._take(label)
            return work()
        finally:
            try:
                self._lock.release()
            except RuntimeError:  # not held: never taken, or given up while waiting
                pass
            self._forget(me)

    def while_waiting(self, wait: Callable[[], T]) -> T:
        """wait() with the turn given up meanwhile when this thread holds it, and taken back after."""
        if not self._lock._is_owned():
            return wait()
        me, label, _ = self._holder
        self._lock.release()
        self._forget(me)
        result = wait()
        self._take(label)
        return result

    def describe(self) -> str:
        waiting = ", ".join(self._waiting.values()) or "none"
        held = f"the turn held by {self._holder[2]}" if self._holder[0] else "the turn free"
        return f"{held}; waiting for the turn: {waiting}"

    def _take(self, label: str) -> None:
        me = threading.get_ident()
        assert not self._lock._is_owned(), "the turn is taken once per prediction"
        who = f"{threading.current_thread().name} ({label})"
        if not self._lock.acquire(blocking=False):
            self._waiting[me] = who
            waited = time.perf_counter()
            try:  # a cancel lands between these polls (or right after the acquire: run() releases)
                while not self._lock.acquire(timeout=POLL_SECONDS):
                    cancellation.check()
                    self.watch.check(max(self.watch.handed_over, STEPS.last), self.describe)
            finally:
                self._waiting.pop(me, None)
                record("queue", time.perf_counter() - waited)
        self._holder = (me, label, who)
        self.watch.handed_over = time.monotonic()

    def _forget(self, thread: int) -> None:
        if self._holder[0] == thread:  # (no call between the test and the store: one step under the GIL)
            self._holder = (0, "", "")
