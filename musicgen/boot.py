"""The start every entry point makes, in its order: logging, then the settings, then the Hugging
Face environment, before anything imports audiocraft or transformers (they read their cache paths
once, when first imported). predict.py's setup(), train.py, the command line, the tests and the
tools call boot(); our INFO lines (seed, load times, memory) go to stderr.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from pathlib import Path

from musicgen.settings import Settings, read_settings
from musicgen.weights.layout import configure_hub

FORMAT = "%(levelname)s %(name)s: %(message)s"
# Libraries whose start-up warnings tell a user nothing they can act on, and the level they log at.
# xformers: its compiled kernels (built for torch 2.10 / CUDA 12.8) never load beside our torch, and
# nothing calls them: audiocraft's attention runs torch's scaled_dot_product_attention and takes
# only pure-Python helpers from xformers (ops.unbind, LowerTriangularMask). Without this, every
# start prints a six-line "can't load C++/CUDA extensions" warning.
# audiocraft: an INFO line per generation about its codebook pattern's shape.
QUIET_LOGGERS = {"xformers": logging.ERROR, "audiocraft": logging.WARNING}
# audiocraft's EnCodec is built with torch.nn.utils.weight_norm, which torch deprecates: a warning
# about audiocraft's code at every load, with nothing for the user to do.
QUIET_WARNINGS = ("`torch.nn.utils.weight_norm` is deprecated",)


def boot(weights_root: Path | None = None) -> Settings:
    """Configure logging, read and check every setting (SettingsError names a bad one), point the
    Hugging Face and torch caches at the weights root (`weights_root`, else the settings'), offline;
    return the settings. Call it once, first, before importing anything that loads audiocraft."""
    configure_logging()
    settings = read_settings()
    if weights_root is not None:
        settings = settings.replace(weights_root=Path(weights_root).resolve())
    configure_hub(settings.weights_root)
    return settings


def configure_logging(level: int = logging.INFO) -> None:
    """Make the `musicgen` loggers' INFO lines visible, without duplicating anyone's handlers.

    Cog's worker process configures no logging handler, so INFO lines would be dropped: add one
    stream handler on stderr (which Cog records in the setup and prediction logs) unless a handler
    already exists on the `musicgen` logger or an ancestor (the CLI's basicConfig, pytest). The
    level is set only when nobody set one. Safe to call any number of times.
    """
    quiet_libraries()
    package = logging.getLogger("musicgen")
    if package.level == logging.NOTSET:
        package.setLevel(level)
    if not package.hasHandlers():
        handler = CancelSafeStreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        package.addHandler(handler)


class CancelSafeStreamHandler(logging.StreamHandler):
    """A StreamHandler whose lock a cancel cannot leave taken (musicgen.cancellation).

    logging.Handler.handle() takes its lock in a Python method (`self.acquire()`) before the `try`
    that releases it: a cancel landing in between would leave the lock held by a prediction's
    thread, and every other thread's next log line would wait for ever. Here the lock is taken with
    `with`, whose enter and exit are the RLock's own C code.
    """

    def handle(self, record: logging.LogRecord) -> bool:
        passed = self.filter(record)
        if passed:
            with self.lock:
                self.emit(record)
        return bool(passed)

    def flush(self) -> None:
        with self.lock:
            if self.stream and hasattr(self.stream, "flush"):
                self.stream.flush()


def quiet_libraries() -> None:
    """Raise the QUIET_LOGGERS to their levels and ignore the QUIET_WARNINGS; call before the libraries load."""
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=FutureWarning)
