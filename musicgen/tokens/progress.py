"""Progress of a generation that knows its step count, and what each of its phases took.

Cog streams a prediction's logs while it runs. A generation still running after QUIET_SECONDS logs
a line about every 10 % of its steps or every 5 s (steps done / total, elapsed, estimated time
left); a shorter one logs none. Every generation ends with one line: steps, time and steps/s. On a
terminal (stderr is a TTY, as for `python -m musicgen predict` run by hand) a tqdm bar instead of
the periodic lines.

Measures: a prediction's seconds per phase (PHASES) and its LM steps, for the metrics
(musicgen.serving.metrics). The prediction sets MEASURES; each layer adds its part with timed(),
in the prediction's thread or (batched steps) in its context.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from tqdm import tqdm

from musicgen import cancellation

log = logging.getLogger(__name__)

QUIET_SECONDS = 5.0  # no periodic line before this: a short generation has only its closing line
EVERY_FRACTION = 0.1  # then a line at least every 10 % of the steps...
EVERY_SECONDS = 5.0  # ...and at least every 5 s


class Heartbeat:
    """When this process last took a decode step, in any loop, for any model (time.monotonic())."""

    def __init__(self):
        self.last = time.monotonic()

    def beat(self) -> None:
        self.last = time.monotonic()


STEPS = Heartbeat()  # every Progress.advance() beats it: the stall watchdog reads it (tokens.turn.Watch)

# waiting (for a worker, the turn, a slot), conditions and the prefill, the LM's steps, EnCodec or
# MultiBand Diffusion, normalizing and writing the file
PHASES = ("queue", "prefill", "decode", "codec", "encode")


@dataclass
class Measures:
    """What one prediction took: seconds per phase, and the LM steps it ran."""

    seconds: dict[str, float] = field(default_factory=dict)
    steps: int = 0

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds


MEASURES: contextvars.ContextVar[Measures | None] = contextvars.ContextVar("musicgen_measures", default=None)


def record(phase: str, seconds: float) -> None:
    """Add `seconds` to the current prediction's `phase` (nothing outside a prediction)."""
    measures = MEASURES.get()
    if measures is not None:
        measures.add(phase, seconds)


@contextlib.contextmanager
def timed(phase: str) -> Iterator[None]:
    """The block's wall time, added to the current prediction's `phase`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        record(phase, time.perf_counter() - start)


class Progress:
    """Call advance() once per step; close() when done (logs the closing line)."""

    def __init__(
        self,
        total: int,
        label: str = "generating",
        bar: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total = max(total, 1)
        self.label = label
        self.done = 0
        self.clock = clock
        self.start = self.last_time = clock()
        self.last_done = 0
        self.neighbours = 0  # with batched decoding: the most other predictions in one of its steps
        self.bar = (
            tqdm(total=total, desc=label, unit="step", leave=False)
            if (sys.stderr.isatty() if bar is None else bar)
            else None
        )

    def advance(self) -> None:
        """One more step; a cancelled prediction stops here (musicgen.cancellation.check)."""
        cancellation.check()
        self.done += 1
        STEPS.beat()
        if self.bar is not None:
            self.bar.update(1)
            return
        now = self.clock()
        if now - self.start < QUIET_SECONDS:
            return
        if self.done - self.last_done >= EVERY_FRACTION * self.total or now - self.last_time >= EVERY_SECONDS:
            elapsed = now - self.start
            log.info(
                "%s: %d/%d steps (%d%%), %.1f s elapsed, about %.1f s left",
                self.label,
                self.done,
                self.total,
                100 * self.done // self.total,
                elapsed,
                elapsed / self.done * (self.total - self.done),
            )
            self.last_time, self.last_done = now, self.done

    def close(self) -> None:
        """The closing line; the steps done are added to the current prediction's measures."""
        measures = MEASURES.get()
        if measures is not None:
            measures.steps += self.done
        if self.bar is not None:
            self.bar.close()
        elapsed = self.clock() - self.start
        rate = self.done / elapsed if elapsed > 0 else float("inf")
        others = f"{self.neighbours} other prediction{'s' if self.neighbours > 1 else ''}"
        shared = f"; its steps shared with up to {others}" if self.neighbours else ""
        log.info("%s: %d/%d steps in %.1f s (%.1f steps/s%s)", self.label, self.done, self.total, elapsed, rate, shared)
