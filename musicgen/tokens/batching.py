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
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from musicgen.cancellation import uninterrupted
from musicgen.tokens.loop import WindowState
from musicgen.tokens.sampling import Sampling, guided, next_token
from musicgen.tokens.slots import ROWS_PER_SLOT, SlotStep

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05  # a waiting thread wakes this often, so that a cancel reaches it
IDLE_SECONDS = 60.0  # the Batcher's thread ends after this long with nothing to step (restarted on demand)


class Turn:
    """One prediction at a time in the work outside the batched steps; released while it waits
    for its tokens. Waiting for it can be cancelled (PredictionCancelled) between polls."""

    def __init__(self):
        self._lock = threading.Lock()
        self._owner: int | None = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self._acquire()
        try:
            yield
        finally:
            self._release()

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        """Let others take the turn while this thread waits (it takes it back afterwards)."""
        mine = self._owner == threading.get_ident()
        if mine:
            self._release()
        try:
            yield
        finally:
            if mine:
                self._acquire()

    def _acquire(self) -> None:
        while True:
            with uninterrupted():  # a cancel lands after the owner is recorded, never between
                if self._lock.acquire(timeout=POLL_SECONDS):
                    self._owner = threading.get_ident()
                    return

    def _release(self) -> None:
        if self._owner == threading.get_ident():
            self._owner = None
            self._lock.release()


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
        self.cancelled = False
        self.neighbours = 0  # the most other windows seen in the same step
        self.codes: torch.Tensor | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def wait(self) -> torch.Tensor:
        while not self.done.wait(POLL_SECONDS):  # a cancel raised in this thread lands between waits
            pass
        if self.error is not None:
            raise self.error
        return self.codes

    def finish(self, codes: torch.Tensor | None = None, error: BaseException | None = None) -> None:
        self.codes, self.error = codes, error
        self.state = self.logits = None  # the prefill's cache, freed now
        self.done.set()


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
            self.jobs[job.slot] = job
            state = job.state
            self.step.load(job.slot, state.cache, state.prefix + state.offset, state.cross)
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

    def __init__(self, slots: int):
        self.slots = slots
        self.turn = Turn()
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
        with self._changed:
            batch = self._batches.get(loop)
            if batch is None or not batch.step.fits(state):
                return None
            batch.waiting.append(job)
            self._start()
            self._changed.notify()
        try:
            with self.turn.released():
                codes = job.wait()
        except BaseException:
            job.cancelled = True  # removed from its slot at the next step
            raise
        draws.reseed()
        return codes, job.neighbours

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
        finally:
            with self._changed:
                if self._thread is threading.current_thread():
                    self._thread = None
