"""Progress of a generation that knows its step count.

A log line about every 10 % of the steps or every 5 s (Cog streams a prediction's logs while it
runs): steps done / total, elapsed, estimated time left. On a terminal (stderr is a TTY, as for
`python -m musicgen predict` run by hand) a tqdm bar instead.
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger(__name__)

EVERY_FRACTION = 0.1  # log at least every 10 % of the steps...
EVERY_SECONDS = 5.0  # ...and at least every 5 s


class Progress:
    """Call advance() once per step; close() when done (logs the last line)."""

    def __init__(self, total: int, label: str = "generating", bar: bool | None = None):
        self.total = max(total, 1)
        self.label = label
        self.done = 0
        self.start = self.last_time = time.monotonic()
        self.last_done = 0
        self.bar = (
            tqdm(total=total, desc=label, unit="step", leave=False)
            if (sys.stderr.isatty() if bar is None else bar)
            else None
        )

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.monotonic()
        if self.done - self.last_done >= EVERY_FRACTION * self.total or now - self.last_time >= EVERY_SECONDS:
            self._log(now)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.done > self.last_done or self.bar is not None:
            self._log(time.monotonic())

    def _log(self, now: float) -> None:
        elapsed = now - self.start
        left = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        log.info(
            "%s: %d/%d steps (%d%%), %.1f s elapsed, about %.1f s left",
            self.label,
            self.done,
            self.total,
            100 * self.done // self.total,
            elapsed,
            left,
        )
        self.last_time, self.last_done = now, self.done
