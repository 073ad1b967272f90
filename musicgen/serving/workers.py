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

The runner counts what is in flight (the readiness probe, musicgen.serving.probes), reports every
ended prediction to the metrics (musicgen.serving.metrics), and drains on SIGTERM (drain()).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import queue
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from musicgen import cancellation
from musicgen.errors import PredictionCancelled, ServerShuttingDown
from musicgen.request import Request
from musicgen.serving import metrics, runtime_patches
from musicgen.serving.service import MusicGenService, Prediction
from musicgen.settings import Settings
from musicgen.tokens.progress import MEASURES, Measures

log = logging.getLogger(__name__)

REFUSED = "the server is shutting down and takes no new predictions; send the request again (another replica takes it)."
STOP_SECONDS = 10.0  # after the drain's deadline: for the stopped predictions to end


class PredictionRunner:
    """Runs MusicGenService.predict on the batch's worker threads; `await runner.predict(request)`."""

    def __init__(
        self,
        service: MusicGenService,
        after_each: Callable[[float], object] | None = None,
        drain_seconds: float = Settings.drain_seconds,
    ):
        self.service = service
        self._after_each = after_each  # called with each job's start time (time.time()) when it ends
        self.places = service.models.max_batch  # predictions that decode at once
        self._executor = ThreadPoolExecutor(max_workers=self.places, thread_name_prefix="musicgen-predict")
        self.drain_seconds = drain_seconds
        self.draining = False  # set once, by drain(): no new prediction is taken
        self._jobs: set[_Job] = set()  # in flight: queued for a worker thread, or running
        self._jobs_lock = threading.Lock()

    @classmethod
    def load(cls, settings: Settings, fine_tuned: str | None = None) -> PredictionRunner:
        """Load the service; inside Cog's server, also adapt its runtime (musicgen.serving.runtime_patches)."""
        if not runtime_patches.under_cog_server():
            return cls(MusicGenService.load(settings, fine_tuned=fine_tuned), drain_seconds=settings.drain_seconds)
        runtime_patches.keep_url_inputs()
        runtime_patches.observe_stream_cancels(cancel_stream)
        # Each slot's answer is sent after its predict() returns: keep that many outputs on disk.
        service = MusicGenService.load(settings, fine_tuned=fine_tuned, outputs_kept=settings.runtime_slots - 1)
        return cls(service, after_each=runtime_patches.remove_prediction_folders, drain_seconds=settings.drain_seconds)

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    async def predict(self, request: Request) -> Prediction:
        job, future = self._submit(self.service.predict, request)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # still queued: never runs
            job.cancel()  # running: stopped at its next Python instruction
            raise
        except PredictionCancelled:
            if job.shut_down:  # stopped by the drain: its caller reads why
                raise ServerShuttingDown(self._stopped()) from None
            raise

    def drain(self) -> dict:
        """SIGTERM's drain: take no new prediction (they fail at once, saying so), let those in
        flight finish within drain_seconds, stop the rest (failed, saying the server is shutting
        down), and return when none is left: the counts."""
        self.draining = True
        before, deadline = self.in_flight, time.monotonic() + self.drain_seconds
        log.info("draining: %d prediction(s) in flight may take up to %g s to finish", before, self.drain_seconds)
        while self._jobs and time.monotonic() < deadline:
            time.sleep(0.05)
        stopped = list(self._jobs)
        for job in stopped:
            job.shut_down = True  # one still queued fails as it starts
            job.cancel()
        end = time.monotonic() + STOP_SECONDS
        while self._jobs and time.monotonic() < end:
            time.sleep(0.05)
        log.info("drained: %d finished, %d stopped, %d left", before - len(stopped), len(stopped), self.in_flight)
        return {"finished": before - len(stopped), "stopped": len(stopped), "left": self.in_flight}

    def _stopped(self) -> str:
        return (
            f"the server is shutting down: this prediction could not finish within MUSICGEN_DRAIN_SECONDS="
            f"{self.drain_seconds:g} s and was stopped; send the request again (another replica takes it)."
        )

    def _submit(self, call, request: Request) -> tuple[_Job, object]:
        """`call(request)` as a job on the worker threads, counted in flight until it ends."""
        if self.draining:
            metrics.observe(request.model_version, "failed", 0.0, Measures())
            raise ServerShuttingDown(REFUSED)
        job = _Job(call, request, contextvars.copy_context(), self._after_each)
        with self._jobs_lock:
            self._jobs.add(job)
        future = self._executor.submit(job.run)
        future.add_done_callback(functools.partial(self._ended, job, request))
        return job, future

    def _ended(self, job: _Job, request: Request, future) -> None:
        with self._jobs_lock:
            self._jobs.discard(job)
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or (isinstance(error, PredictionCancelled) and not job.shut_down):
            status = "canceled"
        else:
            status = "succeeded" if error is None else "failed"  # a drain's stop is a failure
        metrics.observe(request.model_version, status, time.perf_counter() - job.submitted, job.measures)

    def stream(self, request: Request) -> Iterator[Path]:
        """The streaming predictor's items: a generator of each chunk's file as the worker writes
        it, then the prediction's own file (the whole piece). The prediction starts now, on a
        worker thread; closing the generator, or cancel_stream(it), stops it as a cancel of
        predict() does, and the generator then raises asyncio.CancelledError (what Cog's runtime
        reads as a cancel)."""
        items: queue.SimpleQueue = queue.SimpleQueue()
        job, future = self._submit(functools.partial(self.service.predict, on_chunk=items.put), request)
        future.add_done_callback(lambda _: items.put(_DONE))
        generator = _relay(items, future, job, self._stopped)
        STREAMS[generator] = job.cancel
        return generator


_DONE = object()  # a stream's last item: its prediction has ended
# The streams running, generator -> how to stop its prediction (musicgen.serving.runtime_patches
# calls it when Cog's runtime cancels the prediction that returned the generator).
STREAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cancel_stream(generator) -> bool:
    """Stop the prediction behind a generator stream() returned; whether it was one (anything
    else, such as a finished predict()'s Path or None, is not, and cannot key a weak dict)."""
    if not isinstance(generator, types.GeneratorType):
        return False
    stop = STREAMS.get(generator)
    if stop is not None:
        stop()
    return stop is not None


def _relay(items: queue.SimpleQueue, future, job: _Job, stopped: Callable[[], str]) -> Iterator[Path]:
    """Each chunk's file as it comes, then the prediction's file (or its error; a cancel as
    asyncio.CancelledError; stopped by a drain, ServerShuttingDown saying `stopped()`)."""
    try:
        while (item := items.get()) is not _DONE:
            yield item
        try:
            yield future.result().path
        except PredictionCancelled:
            if job.shut_down:
                raise ServerShuttingDown(stopped()) from None
            raise asyncio.CancelledError from None
    finally:
        if not future.done():  # closed early: the consumer is gone
            future.cancel()
            job.cancel()


class _Job:
    """One call on the worker thread, with the caller's context (Cog routes log lines by it)."""

    def __init__(self, function, request, context: contextvars.Context, after: Callable[[float], object] | None):
        self.measures = Measures()  # what it took, by phase (the metrics)
        self.submitted = time.perf_counter()
        self.shut_down = False  # stopped by the server's drain (SIGTERM)
        self._call = lambda: context.run(self._measured, function, request)
        self._after = after
        self._state = threading.Lock()  # guards _thread: a cancel never lands outside run()
        self._thread: int | None = None

    def _measured(self, function, request) -> Prediction:
        MEASURES.set(self.measures)  # in this job's own context: every layer below adds its phases
        self.measures.add("queue", time.perf_counter() - self.submitted)  # waiting for a worker thread
        if self.shut_down:
            raise PredictionCancelled  # queued when the drain's deadline came
        return function(request)

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
