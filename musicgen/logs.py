"""Logging set-up for the Cog worker: our INFO lines (seed, load times, memory) go to stderr."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """Make the `musicgen` loggers' INFO lines visible, without duplicating anyone's handlers.

    Cog's worker process configures no logging handler, so INFO lines would be dropped: add one
    stream handler on stderr (which Cog records in the setup and prediction logs) unless a handler
    already exists on the `musicgen` logger or an ancestor (the CLI's basicConfig, pytest). The
    level is set only when nobody set one. Safe to call any number of times.
    """
    package = logging.getLogger("musicgen")
    if package.level == logging.NOTSET:
        package.setLevel(level)
    if not package.hasHandlers():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        package.addHandler(handler)
