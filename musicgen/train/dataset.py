"""The caller's dataset: the audio files of an archive with their captions, or one audio file.

The archive is recognised by its content (zip; tar, plain or gzip / bzip2 / xz compressed);
anything else is taken as one audio file. Members are read straight out of the archive, one at a
time, into a scratch file whose name is ours: a member's name is never a path on disk, so
`../x.wav` or `/etc/x` cannot write outside the work folder. Only regular files are read (links,
devices and folders are skipped), and so are macOS resource forks and hidden files. `<name>.txt`
beside `<name>.<anything>` in the same folder is that file's caption (UTF-8); a file without one
gets the caller's `one_same_description`, or none.

A file the caller should hear about (a member too large, an unreadable caption) is skipped with a
warning naming it; whether a file is audio at all is for the decoder (musicgen.train.segments).
"""

from __future__ import annotations

import contextlib
import logging
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from musicgen.errors import InputError
from musicgen.limits import MAX_PROMPT_CHARACTERS

log = logging.getLogger(__name__)

CAPTION_SUFFIX = ".txt"
MAX_MEMBER_BYTES = 4 * 10**9  # one audio file in an archive; 20 minutes of 8-channel 96 kHz WAV is 3.7 GB
MAX_ARCHIVE_BYTES = 20 * 10**9  # all the files of an archive, as its headers state them
# Audio barely compresses (WAV to zip: under 2 times; FLAC, MP3: none): an archive whose files
# would take more than this many times its own size is a zip bomb, refused before anything is read.
MAX_COMPRESSION_RATIO = 50
COPY_CHUNK = 1 << 20
IGNORED_PARTS = ("__MACOSX",)  # folders archivers add; with hidden files (".DS_Store", "._song.wav")


@dataclass(frozen=True)
class DatasetFile:
    """One candidate audio file: its name in the dataset, where its bytes are now, its caption."""

    name: str
    path: Path
    caption: str | None


class Skipped(list):
    """(name, reason) of every file left out, in order; each one is logged as a warning as it happens."""

    def add(self, name: str, reason: str) -> None:
        log.warning("skipped %s: %s", name, reason)
        self.append((name, reason))


def dataset_files(
    path: Path, scratch: Path, default_caption: str | None, skipped: Skipped, name: str | None = None
) -> Iterator[DatasetFile]:
    """The dataset's candidate audio files, one at a time. A member's scratch copy in `scratch`
    exists while it is being used and is removed when the next one is read. `name`: what a
    dataset of one audio file is called (default: its file's name)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = [_Member(info.filename, info.file_size, _zip_regular(info), info) for info in archive.infolist()]
            yield from _files(members, lambda member: archive.open(member.entry), scratch, default_caption, skipped)
    elif tarfile.is_tarfile(path):
        with tarfile.open(path, "r:*") as archive:
            members = [_Member(info.name, info.size, info.isfile(), info) for info in archive.getmembers()]
            yield from _files(
                members, lambda member: archive.extractfile(member.entry), scratch, default_caption, skipped
            )
    else:
        yield DatasetFile(name or path.name, path, default_caption)


def check_archive(path: Path) -> None:
    """InputError for an archive whose files, as its headers state them, would take more than
    MAX_ARCHIVE_BYTES, or more than MAX_COMPRESSION_RATIO times the archive's own size: before
    anything is extracted (or any model loads). One audio file passes as it is."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            total = sum(info.file_size for info in archive.infolist() if _zip_regular(info))
    elif tarfile.is_tarfile(path):
        with tarfile.open(path, "r:*") as archive:  # (a compressed tar's headers are read through once)
            total = sum(info.size for info in archive.getmembers() if info.isfile())
    else:
        return
    archive_bytes = Path(path).stat().st_size
    ratio = total / max(archive_bytes, 1)
    if total > MAX_ARCHIVE_BYTES or ratio > MAX_COMPRESSION_RATIO:
        raise InputError(
            f"dataset_path is an archive of {archive_bytes / 1e6:.1f} MB whose files would take {total / 1e9:.2f} GB "
            f"({ratio:.0f} times its size); at most {MAX_ARCHIVE_BYTES / 1e9:g} GB and {MAX_COMPRESSION_RATIO} times "
            f"is read (audio barely compresses). Send the audio itself (FLAC, MP3, WAV) in a plain archive."
        )


@dataclass(frozen=True)
class _Member:
    name: str  # as the archive names it, never used as a path
    size: int  # bytes, as the archive states
    regular: bool  # a plain file (not a folder, link or device)
    entry: object  # the archive's own handle (ZipInfo, TarInfo)

    @property
    def key(self) -> PurePosixPath:
        """The member's path in the archive without its last suffix: what pairs audio with caption."""
        path = PurePosixPath(self.name.replace("\\", "/"))
        return path.with_suffix("") if path.name else path  # "", "." or "/": no name, no suffix

    @property
    def ignored(self) -> bool:
        parts = PurePosixPath(self.name.replace("\\", "/")).parts
        return any(part in IGNORED_PARTS or part.startswith(".") and part not in (".", "..") for part in parts)


def _zip_regular(info: zipfile.ZipInfo) -> bool:
    is_link = (info.external_attr >> 16) & 0o170000 == 0o120000  # a symlink stored by Unix zip
    return not info.is_dir() and not is_link


def _files(
    members: list[_Member], opener, scratch: Path, default_caption: str | None, skipped: Skipped
) -> Iterator[DatasetFile]:
    wanted = [m for m in members if m.regular and not m.ignored]
    for nameless in [m for m in wanted if not m.key.name]:  # "", "." or "/" as a regular file's name
        skipped.add(repr(nameless.name), "a file in the archive without a name")
        wanted.remove(nameless)
    captions = {m.key: m for m in wanted if m.name.lower().endswith(CAPTION_SUFFIX)}
    for number, member in enumerate(m for m in wanted if not m.name.lower().endswith(CAPTION_SUFFIX)):
        caption = default_caption
        if member.key in captions:
            text, problem = _read_caption(captions[member.key], opener)
            if problem:
                skipped.add(member.name, problem)
                continue
            caption = text or default_caption  # an empty .txt: as if there were none
        if member.size > MAX_MEMBER_BYTES:
            skipped.add(member.name, f"{member.size / 1e9:.1f} GB; a file may be at most {MAX_MEMBER_BYTES / 1e9:g} GB")
            continue
        copy = scratch / f"member-{number:06d}"  # our name: the member's own never reaches the disk
        try:
            with contextlib.closing(opener(member)) as source, open(copy, "wb") as target:
                _copy(source, target)
            yield DatasetFile(member.name, copy, caption)
        except _TooLarge:
            skipped.add(member.name, f"larger than {MAX_MEMBER_BYTES / 1e9:g} GB, more than its header said")
        except Exception as error:  # damaged, encrypted, an unknown compression: this member only
            skipped.add(member.name, f"could not be read from the archive ({type(error).__name__})")
        finally:
            copy.unlink(missing_ok=True)


class _TooLarge(Exception):
    pass


def _copy(source: IO[bytes], target: IO[bytes]) -> None:
    copied = 0
    while chunk := source.read(COPY_CHUNK):
        copied += len(chunk)
        if copied > MAX_MEMBER_BYTES:
            raise _TooLarge
        target.write(chunk)


def _read_caption(member: _Member, opener) -> tuple[str | None, str | None]:
    """(caption or None, why the file it belongs to is skipped or None)."""
    limit = MAX_PROMPT_CHARACTERS * 4 + 4  # bytes of UTF-8 that can hold the longest caption allowed
    too_long = (
        f"its caption {member.name} is longer than {MAX_PROMPT_CHARACTERS} characters "
        f"(the text encoder reads about 512 tokens); shorten it"
    )
    try:
        with contextlib.closing(opener(member)) as source:
            data = source.read(limit + 1)
    except Exception as error:  # damaged, encrypted, an unknown compression
        return None, f"its caption {member.name} could not be read ({type(error).__name__})"
    if len(data) > limit:  # (before decoding: the cut may fall inside a character)
        return None, too_long
    try:
        text = data.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        return None, f"its caption {member.name} is not UTF-8 text"
    if len(text) > MAX_PROMPT_CHARACTERS:
        return None, too_long
    return text or None, None
