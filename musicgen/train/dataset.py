"""The caller's dataset: the audio files of an archive with their captions, or one audio file.

The archive is recognised by its content (zip; tar, plain or gzip / bzip2 / xz compressed);
anything else is taken as one audio file. It is opened once and its members listed once
(Dataset.open, before any model loads), bounded as they are read: at most MAX_MEMBERS members,
names of at most MAX_NAME_BYTES, tar extended headers (GNU long names, PAX) of at most
MAX_EXTENDED_HEADER_BYTES, a zip's central directory counted from its end record before it is read.
An archive past any bound, or whose files as its headers state them would take too much (a zip
bomb), is refused with an InputError naming dataset_path and the limit, before any large allocation.

Members are then read straight out of the archive, one at a time, into a scratch file whose name
is ours: a member's name is never a path on disk, so `../x.wav` or `/etc/x` cannot write outside
the work folder. Only regular files are read (links, devices and folders are skipped), and so are
macOS resource forks and hidden files. `<name>.txt` beside `<name>.<anything>` in the same folder
is that file's caption (UTF-8); a file without one gets the caller's `one_same_description`, or none.

A file the caller should hear about (a member too large, an unreadable caption) is skipped with a
warning naming it (shortened: a name can be 4 KB); whether a file is audio at all is for the
decoder (musicgen.train.segments).
"""

from __future__ import annotations

import contextlib
import logging
import lzma
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from musicgen.errors import InputError
from musicgen.input_rules import MAX_PROMPT_CHARACTERS, shortened

log = logging.getLogger(__name__)

CAPTION_SUFFIX = ".txt"
MAX_MEMBER_BYTES = 4 * 10**9  # one audio file in an archive; 20 minutes of 8-channel 96 kHz WAV is 3.7 GB
MAX_ARCHIVE_BYTES = 20 * 10**9  # all the files of an archive, as its headers state them
# Audio barely compresses (WAV to zip: under 2 times; FLAC, MP3: none): an archive whose files
# would take more than this many times its own size is a zip bomb, refused before anything is read.
MAX_COMPRESSION_RATIO = 50
COPY_CHUNK = 1 << 20
IGNORED_PARTS = ("__MACOSX",)  # folders archivers add; with hidden files (".DS_Store", "._song.wav")
# A dataset is tens to thousands of songs, each with a caption: more members than this is not one
# (a header-count bomb: 200,000 empty members in 445 KB of bzip2 once held a training slot 33 s).
MAX_MEMBERS = 10_000
MAX_NAME_BYTES = 4096  # a member's name, as Linux's PATH_MAX
# One tar extended header (a GNU long name or link, a PAX record set): a 314-byte archive once named
# a 50 MB member this way, and the name, quoted whole in an error, killed the server.
MAX_EXTENDED_HEADER_BYTES = 64 * 1024
MAX_EXTENDED_IN_A_ROW = 8  # extended headers before one member (each names the next)
MAX_CENTRAL_DIRECTORY_BYTES = 16 * 2**20  # a zip's list of members, read whole by zipfile
MAX_LOGGED_SKIPS = 100  # skipped files logged one by one; the rest are counted


@dataclass(frozen=True)
class DatasetFile:
    """One candidate audio file: its name in the dataset, where its bytes are now, its caption."""

    name: str
    path: Path
    caption: str | None


class Skipped(list):
    """(name, reason) of every file left out, in order; the first MAX_LOGGED_SKIPS are logged as
    warnings as they happen, the rest counted in one line. Names are kept shortened."""

    def add(self, name: str, reason: str) -> None:
        name = shortened(name)
        if len(self) < MAX_LOGGED_SKIPS:
            log.warning("skipped %s: %s", name, reason)
        elif len(self) == MAX_LOGGED_SKIPS:
            log.warning("more files skipped: the rest are not logged one by one (the checkpoint's record counts them)")
        self.append((name, reason))


class Dataset:
    """The caller's dataset, opened once: an archive with its members listed and checked, or one
    audio file. Use as a context manager (the archive stays open until files() is done)."""

    def __init__(self, path: Path, name: str | None = None):
        """Open and list `path` (InputError for an archive past a bound, before anything is
        extracted). `name`: what a dataset of one audio file is called (default: its file's name)."""
        self.path, self.name = Path(path), name or Path(path).name
        self.members: list[_Member] | None = None  # None: one audio file
        self._archive: zipfile.ZipFile | tarfile.TarFile | None = None
        try:
            if zipfile.is_zipfile(self.path):
                self._archive, self.members = _list_zip(self.path)
            else:
                self._archive, self.members = _list_tar(self.path)  # (None, None) when not a tar
            if self.members is not None:
                _check_sizes(self.path, self.members)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()
            self._archive = None

    def files(self, scratch: Path, default_caption: str | None, skipped: Skipped) -> Iterator[DatasetFile]:
        """The dataset's candidate audio files, one at a time. A member's scratch copy in
        `scratch` exists while it is being used and is removed when the next one is read."""
        if self.members is None:
            yield DatasetFile(self.name, self.path, default_caption)
            return
        archive = self._archive
        opener = archive.open if isinstance(archive, zipfile.ZipFile) else archive.extractfile
        yield from _files(self.members, lambda member: opener(member.entry), scratch, default_caption, skipped)


def _refused(problem: str) -> InputError:
    return InputError(
        f"dataset_path is an archive {problem}. Send the audio files (FLAC, MP3, WAV) in a plain archive."
    )


def _list_zip(path: Path) -> tuple[zipfile.ZipFile, list[_Member]]:
    """The zip's members, its central directory counted from the end record before zipfile reads it."""
    with open(path, "rb") as file:
        end = zipfile._EndRecData(file)  # zipfile's own reader of the end record (zip64 too)
    if end is None:
        raise _refused("whose end record is damaged")
    declared, directory_bytes = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]
    if declared > MAX_MEMBERS:
        raise _refused(f"of {declared} members; at most {MAX_MEMBERS} are read")
    if directory_bytes > MAX_CENTRAL_DIRECTORY_BYTES:
        raise _refused(
            f"whose list of members takes {directory_bytes / 1e6:.1f} MB; at most "
            f"{MAX_CENTRAL_DIRECTORY_BYTES / 1e6:.1f} MB is read"
        )
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise _refused(f"that cannot be read ({type(error).__name__})") from None
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:  # more than the end record said
        archive.close()
        raise _refused(f"of {len(infos)} members; at most {MAX_MEMBERS} are read")
    try:
        for info in infos:
            _check_name(info.filename)
    except InputError:
        archive.close()
        raise
    return archive, [_Member(info.filename, info.file_size, _zip_regular(info), info) for info in infos]


class _Refusal(Exception):
    """An extended tar header past a bound, raised from inside tarfile's reader."""


class _BoundedTarInfo(tarfile.TarInfo):
    """A tar header whose extended headers (GNU long names and links, PAX records) are checked
    against MAX_EXTENDED_HEADER_BYTES before tarfile reads them into memory."""

    EXTENDED = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                tarfile.SOLARIS_XHDTYPE)  # fmt: skip

    def _proc_member(self, archive):
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _Refusal("with a sparse member (GNU tar --sparse), which this reader does not take")
        if self.type in self.EXTENDED:
            if self.size > MAX_EXTENDED_HEADER_BYTES:
                raise _Refusal(
                    f"with an extended header (a long name or PAX record) of {self.size} bytes; at most "
                    f"{MAX_EXTENDED_HEADER_BYTES} are read"
                )
            in_a_row = archive.__dict__.get("extended_in_a_row", 0) + 1
            if in_a_row > MAX_EXTENDED_IN_A_ROW:
                raise _Refusal(f"with more than {MAX_EXTENDED_IN_A_ROW} extended headers before one member")
            archive.extended_in_a_row = in_a_row
        else:
            archive.extended_in_a_row = 0
        return super()._proc_member(archive)


def _list_tar(path: Path) -> tuple[tarfile.TarFile | None, list[_Member] | None]:
    """The tar's members, read header by header within the bounds; (None, None) when `path` is
    not a tar at all (then it is one audio file)."""
    try:
        archive = tarfile.open(path, "r:*", tarinfo=_BoundedTarInfo)
    except _Refusal as refusal:
        raise _refused(str(refusal)) from None
    except (tarfile.TarError, OSError, EOFError):
        return None, None
    members = []
    try:
        while (info := archive.next()) is not None:
            if len(members) == MAX_MEMBERS:
                raise _refused(f"of more than {MAX_MEMBERS} members; at most {MAX_MEMBERS} are read")
            _check_name(info.name)
            members.append(_Member(info.name, info.size, info.isfile(), info))
    except _Refusal as refusal:
        archive.close()
        raise _refused(str(refusal)) from None
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as error:
        archive.close()
        raise _refused(f"that is damaged ({type(error).__name__} after {len(members)} members)") from None
    except BaseException:
        archive.close()
        raise
    return archive, members


def _check_name(name: str) -> None:
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > MAX_NAME_BYTES:
        raise _refused(
            f"with a member name of {size} bytes ({shortened(name, 60)!r}); at most {MAX_NAME_BYTES} are read"
        )


def _check_sizes(path: Path, members: list[_Member]) -> None:
    """InputError for an archive whose files, as its headers state them, would take more than
    MAX_ARCHIVE_BYTES, or more than MAX_COMPRESSION_RATIO times the archive's own size."""
    total = sum(member.size for member in members if member.regular)
    archive_bytes = path.stat().st_size
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
            yield DatasetFile(shortened(member.name), copy, caption)
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
    caption = shortened(member.name)
    too_long = (
        f"its caption {caption} is longer than {MAX_PROMPT_CHARACTERS} characters "
        f"(the text encoder reads about 512 tokens); shorten it"
    )
    try:
        with contextlib.closing(opener(member)) as source:
            data = source.read(limit + 1)
    except Exception as error:  # damaged, encrypted, an unknown compression
        return None, f"its caption {caption} could not be read ({type(error).__name__})"
    if len(data) > limit:  # (before decoding: the cut may fall inside a character)
        return None, too_long
    try:
        text = data.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        return None, f"its caption {caption} is not UTF-8 text"
    if len(text) > MAX_PROMPT_CHARACTERS:
        return None, too_long
    return text or None, None
