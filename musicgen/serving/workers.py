"""predict.py's async predict(): the service's predictions, up to MUSICGEN_MAX_BATCH at once, in arrival order, cancellable.

Cog's runtime gives a prediction a slot and answers 409 when none is free. It frees a slot a few
milliseconds after it has answered, so a client that sends its next request as soon as the answer
arrives can find the one slot still taken. With more slots than the batch (COG_MAX_CONCURRENCY,
twice MUSICGEN_MAX_BATCH under `serve`; the runtime allows more than one only for an async
predict()) the next request always finds one: every prediction is a job on a pool of N worker
threads (N = MUSICGEN_MAX_BATCH: their windows decode together, musicgen.tokens.batching), taken
in arrival order, so a request beyond N waits for a worker instead of being refused.

A cancel arrives as asyncio's CancelledError in the waiting coroutine. A job still queued is
dropped; a running one is stopped the way the runtime stops a synchronous predict(): an exception
raised in its thread at the next Python instruction, so every `finally` of the service runs
(partial downloads and outputs are removed), except while a model loads (musicgen.cancellation).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from musicgen import cancellation
from musicgen.errors import PredictionCancelled
from musicgen.request import Request
from musicgen.serving import runtime_patches
from musicgen.serving.service import MusicGenService, Prediction
from musicgen.settings import Settings


class PredictionRunner:
    """Runs MusicGenService.predict on the batch's worker threads; `await runner.predict(request)`."""

    def __init__(self, service: MusicGenService, after_each: Callable[[float], object] | None = None):
        self.service = service
        self._after_each = after_each  # called with each job's start time (time.time()) when it ends
        self._executor = ThreadPoolExecutor(max_workers=service.models.max_batch, thread_name_prefix="musicgen-predict")

    @classmethod
    def load(cls, settings: Settings, fine_tuned: str | None = None) -> PredictionRunner:
        """Load the service; inside Cog's server, also adapt its runtime (musicgen.serving.runtime_patches)."""
        if not runtime_patches.under_cog_server():
            return cls(MusicGenService.load(settings, fine_tuned=fine_tuned))
        runtime_patches.keep_url_inputs()
        runtime_patches.observe_stream_cancels(cancel_stream)
        # Each slot's answer is sent after its predict() returns: keep that many outputs on disk.
        service = MusicGenService.load(settings, fine_tuned=fine_tuned, outputs_kept=settings.runtime_slots - 1)
        return cls(service, after_each=runtime_patches.remove_prediction_folders)

    async def predict(self, request: Request) -> Prediction:
        job = _Job(self.service.predict, request, contextvars.copy_context(), self._after_each)
        future = self._executor.submit(job.run)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # still queued: never runs
            job.cancel()  # running: stopped at its next Python instruction
            raise

    def stream(self, request: Request) -> Iterator[Path]:
        """The streaming predictor's items: a generator of each chunk's file as the worker writes
        it, then the prediction's own file (the whole piece). The prediction starts now, on a
        worker thread; closing the generator, or cancel_stream(it), stops it as a cancel of
        predict() does, and the generator then raises asyncio.CancelledError (what Cog's runtime
        reads as a cancel)."""
        items: queue.SimpleQueue = queue.SimpleQueue()
        job = _Job(functools.partial(self.service.predict, on_chunk=items.put), request, contextvars.copy_context(),
                   self._after_each)  # fmt: skip
        future = self._executor.submit(job.run)
        future.add_done_callback(lambda _: items.put(_DONE))
        generator = _relay(items, future, job)
        STREAMS[generator] = job.cancel
        return generator


_DONE = object()  # a stream's last item: its prediction has ended
# The streams running, generator -> how to stop its prediction (musicgen.serving.runtime_patches
# calls it when Cog's runtime cancels the prediction that returned the generator).
STREAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cancel_stream(generator) -> bool:
    """Stop the prediction behind a generator stream() returned; whether it was one."""
    stop = STREAMS.get(generator)
    if stop is not None:
        stop()
    return stop is not None


def _relay(items: queue.SimpleQueue, future, job: _Job) -> Iterator[Path]:
    """Each chunk's file as it comes, then the prediction's file (or its error; a cancel as
    asyncio.CancelledError)."""
    try:
        while (item := items.get()) is not _DONE:
            yield item
        try:
            yield future.result().path
        except PredictionCancelled:
            raise asyncio.CancelledError from None
    finally:
        if not future.done():  # closed early: the consumer is gone
            future.cancel()
            job.cancel()


class _Job:
    """One call on the worker thread, with the caller's context (Cog routes log lines by it)."""

    def __init__(self, function, request, context: contextvars.Context, after: Callable[[float], object] | None):
        self._call = lambda: context.run(function, request)
        self._after = after
        self._state = threading.Lock()  # guards _thread: a cancel never lands outside run()
        self._thread: int | None = None

    def run(self) -> Prediction:
        started = time.time()
        thread = threading.get_ident()
        with self._state:
            self._thread = thread
            cancellation.clear(thread)  # thread ids are reused: no earlier cancel reaches this job
        try:
            return self._call()
        finally:
            try:
                with self._state:  # no cancel is sent to this job after this block
                    self._thread = None
                cancellation.clear(thread)  # one sent just before lands by this line at the latest
            except PredictionCancelled:
                cancellation.clear(thread)  # (a cancel is sent once: nothing else lands here)
            if self._after is not None:
                self._after(started)

    def cancel(self) -> None:
        with self._state:
            if self._thread is not None:
                cancellation.cancel(self._thread)
