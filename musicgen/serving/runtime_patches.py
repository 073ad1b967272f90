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
"""

from __future__ import annotations

import logging
import os
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
