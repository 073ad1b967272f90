"""Files that appear whole or not at all: every output, schema, record and checkpoint we write goes through here."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def replace(staged: Path, dest: Path) -> None:
    """Flush `staged` to disk and rename it onto `dest` in one step: readers see the old file or the new one."""
    with open(staged, "rb") as file:
        os.fsync(file.fileno())
    os.replace(staged, dest)


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """A path to write `dest`'s new content to; renamed onto `dest` when the block succeeds, removed when it fails.

    It has `dest`'s own file name (torch.save names the archive inside a file after it), in a hidden
    scratch folder beside `dest` that is unique to this call, so concurrent writers never share one.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        staged = scratch / dest.name
        yield staged
        replace(staged, dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_text(dest: Path, text: str) -> Path:
    """Write `text` to `dest` atomically; return `dest`."""
    with atomic_path(dest) as staged:
        staged.write_text(text)
    return Path(dest)
