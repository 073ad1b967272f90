"""Cog's runtime (coglet 0.23.1) inside its worker: what this service changes in it, and why.

Both changes apply only in the worker of Cog's HTTP server (`coglet.server.active`): for
predictions musicgen.serving.workers installs them at setup; a training has no setup, so train.py installs
the first when coglet imports it (`for_trainings()`) and train() calls the second when it ends.
The command line and Python callers never go through them.

1. File inputs stay URLs. For a `Path` input sent as an http(s) or data: URL, coglet calls
   `cog.types.Path.validate`, which downloads the file before predict() runs: no overall deadline,
   no size limit, a cancel that cannot stop it, raw library text in its errors and a 0-byte temp
   file left behind when it fails. `keep_url_inputs()` makes that call hand the URL through
   unchanged; musicgen.audio.fetch downloads it inside the prediction, under its limits.
2. coglet creates /tmp/coglet/predictions/<id>/{inputs,outputs} for every prediction and never
   removes them. `remove_prediction_folders()` removes the empty ones once their prediction is over.
3. The streaming predictor's predict() is a coroutine that returns a generator (coglet streams the
   items of a returned generator as they come, but collects an async generator's whole before
   sending any). coglet cancels such a prediction (a cancel, a client gone) by calling cancel() on
   the future of the coroutine, which has already returned: the generator runs on. With
   `observe_stream_cancels()`, that cancel() stops the prediction behind the generator
   (musicgen.serving.workers.cancel_stream) before doing what it does.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

PREDICTION_FOLDERS = Path("/tmp/coglet/predictions")  # coglet's, hard-coded in its service
PREDICTION_SUBFOLDERS = ("inputs", "outputs")


def under_cog_server() -> bool:
    """Whether this process is the worker of Cog's HTTP server."""
    try:
        import coglet
    except ImportError:
        return False
    return bool(coglet.server.active)


def keep_url_inputs() -> None:
    """Make cog.types.Path.validate pass text through, so URLs reach predict() as URLs. Idempotent."""
    from cog import types

    def keep_text(cls, value):
        return value  # a URL (coglet calls this only for http:, https: and data: text)

    types.Path.validate = classmethod(keep_text)
    log.info("input files arrive as URLs; musicgen fetches them under its own limits")


def observe_stream_cancels(cancel_stream: Callable[[object], bool]) -> None:
    """Make Future.cancel() on a finished future whose result is a stream also stop the stream's
    prediction (`cancel_stream(result)`; a no-op for anything else). Idempotent."""
    future_class = concurrent.futures.Future
    if getattr(future_class.cancel, "stops_streams", False):
        return
    original = future_class.cancel

    def cancel(future: concurrent.futures.Future) -> bool:
        if future.done() and not future.cancelled() and future.exception() is None:
            cancel_stream(future.result())
        return original(future)

    cancel.stops_streams = True
    future_class.cancel = cancel
    log.info("a cancel of a streaming prediction stops it (coglet only cancels the finished coroutine)")


def for_trainings() -> None:
    """In a training server's worker: dataset_path reaches train() as the caller's text (a URL that
    musicgen.train.source fetches under the operator's limits, or text it refuses), never as a
    server path Cog resolved or a download Cog made without limits. Elsewhere nothing changes."""
    if under_cog_server():
        keep_url_inputs()


def after_training(started: float) -> None:
    """In a training server's worker: remove the runtime's folders of trainings now over."""
    if under_cog_server():
        remove_prediction_folders(started)


def remove_prediction_folders(created_before: float, root: Path = PREDICTION_FOLDERS) -> int:
    """Remove coglet's per-prediction folders made before `created_before` (time.time()) that hold
    nothing; return how many went.

    Called when a prediction ends: its own folder was made before it started and is no longer
    read (its input was read on arrival; a file output is sent from where predict() wrote it).
    A folder made later belongs to a prediction that has not run yet, and anything holding a
    file is left alone. Never raises.
    """
    removed = 0
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_mtime >= created_before:
                continue
            folder = Path(entry.path)
            for name in PREDICTION_SUBFOLDERS:
                if (folder / name).is_dir():
                    (folder / name).rmdir()
            folder.rmdir()
            removed += 1
        except OSError:
            continue  # not empty, or already gone
    return removed
