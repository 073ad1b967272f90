"""Which compression checkpoints load the same EnCodec, so each is loaded once."""

from __future__ import annotations

import filecmp
from pathlib import Path

from musicgen.models.checkpoints import read_checkpoint
from musicgen.weights import layout

POINTER_MAX_BYTES = 64 * 1024  # an EnCodec pointer is a few hundred bytes; the EnCodec itself 236 MB


def _pointer_target(path: Path) -> str | None:
    """The pretrained EnCodec a pointer checkpoint names ({'pretrained': name, ...}: audiocraft's
    export_pretrained_compression_model), or None for a checkpoint holding the weights."""
    if path.stat().st_size > POINTER_MAX_BYTES:
        return None
    package = read_checkpoint(path)
    return package.get("pretrained") if isinstance(package, dict) else None


def same_codec(a: Path, b: Path, root: Path) -> bool:
    """Whether two compression checkpoints load the same EnCodec: pointers naming the same
    pretrained model (whatever else their files record, e.g. the exporting audiocraft version),
    or files with the same bytes."""
    targets = _pointer_target(a), _pointer_target(b)
    if targets != (None, None):
        return targets[0] == targets[1]
    return _same_file(a, b, root)


def _same_file(a: Path, b: Path, root: Path) -> bool:
    """Whether two checkpoint files hold the same bytes: the downloader's records (sha256) when
    both have one, else a byte comparison (under a second for the 236 MB EnCodec)."""
    if a == b:
        return True
    if a.stat().st_size != b.stat().st_size:
        return False
    digests = []
    for path in (a, b):
        record = layout.read_record(path.relative_to(root).as_posix(), root)
        digests.append(record.get("sha256") if record.get("size") == path.stat().st_size else None)
    if None not in digests:
        return digests[0] == digests[1]
    return filecmp.cmp(a, b, shallow=False)
