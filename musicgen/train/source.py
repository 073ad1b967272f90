"""Where a training's dataset comes from: a local file, or a URL fetched under the operator's limits.

From the command line and Python, `dataset_path` is a local file (a Path). Over HTTP every file
input arrives as the caller's text (musicgen.serving.runtime_patches keeps Cog from resolving or downloading it):
an http(s) URL or a data: URI, fetched here like input_audio (musicgen.audio.fetch: a deadline, a
size cap of its own, a cancel that stops it, nothing left behind). Any other text, a path on the
server above all, is refused without being looked at.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from musicgen.audio.fetch import FetchLimits, fetch
from musicgen.errors import InputError
from musicgen.input_rules import is_url, shortened

NAME = "dataset_path"


def check_source(dataset_path: object) -> None:
    """InputError for text that is not a URL (a path on the server): before anything is read."""
    if isinstance(dataset_path, str) and not is_url(dataset_path):
        raise InputError(
            f"{NAME}={shortened(dataset_path)!r} is not a URL; give an http(s) URL or a data: URI "
            f"(a local file only from the command line, -i {NAME}=songs.zip, or as a pathlib.Path from Python)."
        )


def is_remote(dataset_path: object) -> bool:
    return isinstance(dataset_path, str) and is_url(dataset_path)


def local_dataset(dataset_path: str | Path, folder: Path, limits: FetchLimits) -> Path:
    """The dataset as a local file: a Path as it is, a URL fetched into `folder` under `limits`."""
    check_source(dataset_path)
    if is_remote(dataset_path):
        return fetch(dataset_path, folder, limits, name=NAME)
    return Path(dataset_path)


def recorded_name(dataset_path: str | Path) -> str:
    """The dataset's name in the checkpoint's record: a file's name, a URL's last path component
    (never its query, which may hold a signature), or "data: URI"."""
    if not is_remote(dataset_path):
        return Path(dataset_path).name
    if str(dataset_path).lower().startswith("data:"):
        return "data: URI"
    return Path(urllib.parse.unquote(urllib.parse.urlsplit(str(dataset_path)).path)).name or "dataset"
