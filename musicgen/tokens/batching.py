"""Continuous batching: the windows of concurrent predictions decode together, one step for all.

MUSICGEN_MAX_BATCH=N > 1. Each prediction runs in its own thread: it prepares its window (the
conditions and the prefill, alone, so nothing of it depends on a neighbour), hands it to the
Batcher and waits; the Batcher's one thread puts it in a free slot of its model's SlotStep at the
next step, steps every slot together, samples each slot's token from its request's own generator
with its request's own settings, and hands the tokens back when the window is done. EnCodec or
MultiBand Diffusion, normalization and writing then run in the prediction's thread.

Models take turns, one step each, round robin: none waits for another's predictions to end.
Everything else a prediction does with the models (loading, conditions, prefill, decoding) runs
under the Turn, one prediction at a time, so torch's global random state (which audiocraft's
HT-Demucs and MultiBand Diffusion draw from) is only ever drawn by the prediction that seeded it.

A cancel can land in a prediction's thread anywhere (musicgen.cancellation): the Turn, the
Batcher's lock and a window's wait are written so that it never leaves a lock taken. What cannot
be proven is watched: a prediction waiting for the turn or its tokens while nothing moves for
MUSICGEN_STALL_SECONDS fails with ServerStalled, and the stall is logged (Watch).
"""

from __future__ import annotations

import collections
import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from musicgen import cancellation
from musicgen.cancellation import uninterrupted
from musicgen.tokens.loop import WindowState
from musicgen.tokens.progress import STEPS, record
from musicgen.tokens.sampling import Sampling, guided, next_token
from musicgen.tokens.slots import ROWS_PER_SLOT, SlotStep
from musicgen.tokens.turn import POLL_SECONDS, Turn, Watch

log = logging.getLogger(__name__)

IDLE_SECONDS = 60.0  # the Batcher's thread ends after this long with nothing to step (restarted on demand)


@dataclass(frozen=True)
class Draws:
    """A prediction's random numbers under batched decoding: its own generator for its tokens,
    and `reseed()`, which puts torch's global generators back to its seed (others drew from
    them while it waited)."""

    generator: torch.Generator
    reseed: Callable[[], None]


class Job:
    """One window of one prediction in the batch."""

    def __init__(self, state: WindowState, sampling: Sampling, generator: torch.Generator, on_step: Callable[[], None]):
        self.state = state
        self.sampling = sampling
        self.generator = generator
        self.on_step = on_step
        self.context = contextvars.copy_context()  # the prediction's: Cog routes its log lines by it
        self.logits: torch.Tensor | None = None  # the next token's logits [2, K, card]
        self.slot: int | None = None
        self.admitted: float | None = None  # when it took its slot (time.perf_counter())
        self.cancelled = False
        self.neighbours = 0  # the most other windows seen in the same step
        # (tokens, error), put once by the stepping thread. A C queue, not a threading.Event: a
        # cancel landing inside Event.wait's Python code could leave the event's inner lock taken,
        # and the stepping thread would then wait for ever in set().
        self._outcome: queue.SimpleQueue = queue.SimpleQueue()

    def wait(self, watch: Watch, describe: Callable[[], str]) -> torch.Tensor:
        """The window's tokens; ServerStalled when the batch makes no step for watch.limit seconds."""
        queued = time.monotonic()
        while True:
            try:
                codes, error = self._outcome.get(timeout=POLL_SECONDS)  # a cancel lands between polls
            except queue.Empty:
                cancellation.check()
                watch.check(max(queued, watch.stepped), describe)
                continue
            if error is not None:
                raise error
            return codes

    def finish(self, codes: torch.Tensor | None = None, error: BaseException | None = None) -> None:
        self.state = self.logits = None  # the prefill's cache, freed now
        self._outcome.put((codes, error))


class ModelBatch:
    """One model's slots and the windows waiting for one."""

    def __init__(self, step: SlotStep):
        self.step = step
        self.jobs: list[Job | None] = [None] * step.slots
        self.waiting: collections.deque[Job] = collections.deque()
        self.forgotten = False  # its model was evicted: dropped once its windows are done

    @property
    def busy(self) -> bool:
        return bool(self.waiting) or any(self.jobs)

    def advance(self) -> None:
        """Admit waiting windows, sample every slot's next token, step them all once."""
        self._admit()
        active = [job for job in self.jobs if job is not None]
        for job in active:
            job.neighbours = max(job.neighbours, len(active) - 1)
            try:
                self._sample(job)
            except Exception as error:  # noqa: BLE001 (this request's failure, not its neighbours')
                self._leave(job, error=error)
        if any(self.jobs):
            try:
                logits = self.step.step()
            except Exception as error:  # noqa: BLE001 (the step is every slot's: all of them fail)
                for job in filter(None, self.jobs):
                    self._leave(job, error=error)
                return
            for job in filter(None, self.jobs):
                job.logits = logits[ROWS_PER_SLOT * job.slot : ROWS_PER_SLOT * (job.slot + 1)]

    def fail_all(self, error: BaseException) -> None:
        for job in [*filter(None, self.jobs), *self.waiting]:
            self._leave(job, error=error)
        self.waiting.clear()

    def _admit(self) -> None:
        for job in [job for job in self.jobs if job is not None and job.cancelled]:
            self._leave(job)
        while self.waiting and None in self.jobs:
            job = self.waiting.popleft()
            if job.cancelled:
                job.finish(error=RuntimeError("cancelled before it joined"))
                continue
            job.slot = self.jobs.index(None)
            job.admitted = time.perf_counter()
            self.jobs[job.slot] = job
            state = job.state
            self.step.load(job.slot, state.cache, state.prefix + state.offset, state.cross, state.adapted)
            job.logits = state.logits
            state.cache = state.cross = None  # copied into the slot: the prefill's buffers go now

    def _sample(self, job: Job) -> None:
        state = job.state
        token = next_token(guided(job.logits, state.batch, job.sampling.cfg_coef), job.sampling, job.generator)
        following = state.take(token)
        job.context.run(job.on_step)
        if following is None:
            self._leave(job, codes=state.codes())
        else:
            self.step.feed(job.slot, *following)

    def _leave(self, job: Job, codes: torch.Tensor | None = None, error: BaseException | None = None) -> None:
        if job.slot is not None and self.jobs[job.slot] is job:
            self.jobs[job.slot] = None
            self.step.free(job.slot)
        job.finish(codes, error)


class Batcher:
    """The one thread stepping every model's batch; `run()` is called from predictions' threads."""

    def __init__(self, slots: int, stall_seconds: float, adapter_rank: int = 0):
        self.slots = slots
        self.adapter_rank = adapter_rank  # the captured (CUDA) slots' adapter buffers (MUSICGEN_LORA_SLOT_RANK)
        self.watch = Watch(stall_seconds)
        self.turn = Turn(self.watch)
        self._batches: dict[object, ModelBatch] = {}  # the model's FastLoop -> its batch
        self._order: collections.deque = collections.deque()  # the loops, in round robin
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def add_model(self, loop, step: SlotStep) -> None:
        """Serve `loop`'s windows (a FastLoop, which then hands them here) in `step`'s slots."""
        with self._changed:
            self._batches[loop] = ModelBatch(step)
            self._order.append(loop)
        loop.batcher = self

    def forget(self, loop) -> None:
        """`loop`'s model was evicted: drop its batch (and slots) once its windows are done."""
        with self._changed:
            batch = self._batches.get(loop)
            if batch is not None:
                batch.forgotten = True
                self._drop_idle()

    def occupancy(self, loop) -> tuple[int, int]:
        """(slots holding a window, slots) of `loop`'s batch; (0, 0) once its batch is gone."""
        batch = self._batches.get(loop)
        return (0, 0) if batch is None else (sum(job is not None for job in batch.jobs), batch.step.slots)

    def stalled(self) -> str | None:
        """Why the batched path is stuck (windows to step and no step for the watch's limit), or None."""
        busy = any(batch.busy for batch in list(self._batches.values()))
        if busy and time.monotonic() - max(self.watch.stepped, STEPS.last) > self.watch.limit:
            return f"no batched step for {self.watch.limit:g} s ({self.describe()})"
        return None

    def step_of(self, loop) -> SlotStep | None:
        """`loop`'s batched step (its slots), or None once its batch is gone."""
        batch = self._batches.get(loop)
        return None if batch is None else batch.step

    def run(self, loop, state: WindowState, sampling: Sampling, draws: Draws, on_step) -> tuple | None:
        """The window's tokens, decoded in `loop`'s batch; the turn is released while it waits.
        Returns (tokens [1, K, max_gen_len], the most other windows it shared a step with), or None
        when the window does not fit a slot or the model's batch is gone (its model was evicted):
        the caller then runs it alone."""
        job = Job(state, sampling, draws.generator, on_step)
        queued = time.perf_counter()
        try:
            with uninterrupted(), self._changed:  # (a Condition: cancel-safe only inside uninterrupted())
                batch = self._batches.get(loop)
                if batch is None or not batch.step.fits(state):
                    return None
                batch.waiting.append(job)
                self._start()
                self._changed.notify()
            codes = self.turn.while_waiting(lambda: job.wait(self.watch, self.describe))
        except BaseException:
            job.cancelled = True  # removed from its slot (or the queue) at the next step
            raise
        draws.reseed()
        admitted = job.admitted or queued
        record("queue", admitted - queued)  # waiting for a slot
        record("decode", time.perf_counter() - admitted)
        return codes, job.neighbours

    def describe(self) -> str:
        """What the batched path holds, for the stall's log line and error."""
        running = sum(job is not None for batch in list(self._batches.values()) for job in batch.jobs)
        queued = sum(len(batch.waiting) for batch in list(self._batches.values()))
        stepping = "a step running" if self._thread is not None else "no stepping thread"
        return f"{running} window(s) in slots, {queued} queued, {stepping}; {self.turn.describe()}"

    def _start(self) -> None:
        """(Called holding _changed.) The stepping thread, started unless it runs."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="musicgen-batch", daemon=True)
            self._thread.start()

    def _next(self) -> ModelBatch | None:
        """The next model with windows to step, in turn; None after IDLE_SECONDS without any (the
        thread then ends, so that nothing keeps the models alive; run() starts it again)."""
        with self._changed:
            while True:
                self._drop_idle()
                for _ in range(len(self._order)):
                    key = self._order[0]
                    self._order.rotate(-1)  # the next model's turn after this one
                    if self._batches[key].busy:
                        return self._batches[key]
                if not self._changed.wait(IDLE_SECONDS):
                    self._thread = None
                    return None

    def _drop_idle(self) -> None:
        for key in [key for key, batch in self._batches.items() if batch.forgotten and not batch.busy]:
            del self._batches[key]
            self._order.remove(key)

    def _serve(self) -> None:
        try:
            with torch.inference_mode():
                while (batch := self._next()) is not None:
                    try:
                        batch.advance()
                    except BaseException as error:  # noqa: BLE001 (never leave a waiting prediction hanging)
                        log.exception("the batched step failed")
                        batch.fail_all(error)
                    self.watch.stepped = time.monotonic()
        finally:
            with self._changed:
                if self._thread is threading.current_thread():
                    self._thread = None
