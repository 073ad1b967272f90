"""`python -m musicgen download`: fetch the manifest's files into the weights root, verified.

Plain HTTP (requests) against the hub's `{endpoint}/{repo}/resolve/{revision}/{path}` endpoint
(`$HF_ENDPOINT`, default https://huggingface.co) or a file's own URL, so it works whatever the
offline switches of huggingface_hub say, and never imports audiocraft or transformers.

Each file is written to `<name>.part` next to its destination and renamed into place only after its
size and SHA-256 check out: a file under its final name is always complete. An interrupted transfer
keeps the `.part` and the next run resumes it with an HTTP Range request. Files run in parallel.
A file already in place is re-hashed and fetched again if it does not match. What was verified is
recorded in `<root>/.verified/<dest>.json`, so files whose digest the source does not publish are
still checked against the digest seen at download, and load-time checks can spot truncation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests
import urllib3
from tqdm import tqdm

from musicgen import atomic_files
from musicgen.weights import layout
from musicgen.weights.manifest import HF_ENDPOINT, MANIFEST, Artifact, Manifest

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes per read from the network and from disk
TIMEOUT = (10, 60)  # seconds: connect, and between two reads of the body
WORKERS = 4  # files fetched at once
ATTEMPTS = 3  # transfers per file before giving up (each one resumes where the last stopped)
USER_AGENT = "musicgen-cog-download/1"


class DownloadError(RuntimeError):
    """A file could not be fetched or verified. The message names the file and its source."""


class _Transient(Exception):
    """A failure worth another attempt: dropped connection, timeout, 5xx, short body."""


@dataclass(frozen=True)
class Result:
    artifact: Artifact
    status: str  # "present" (already verified in place) or "downloaded"


def download(
    targets: Iterable[str],
    root: Path,
    *,
    manifest: Manifest = MANIFEST,
    hub: str | None = None,
    token: str | None = None,
    workers: int = WORKERS,
    attempts: int = ATTEMPTS,
    retry_wait: float = 2.0,
    progress: bool = True,
) -> list[Result]:
    """Fetch every file the named targets (e.g. "melody", "mbd") need into `root`, verified, from
    the hub `hub` (default: the public one; the HF_ENDPOINT setting) with `token` (HF_TOKEN).

    Raises DownloadError listing every file that failed, after the others have finished.
    """
    root = Path(root)
    artifacts = manifest.artifacts(targets)
    hub = hub or HF_ENDPOINT
    bar = _Progress(artifacts, progress)
    failures: list[str] = []
    results: list[Result] = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(artifacts)))) as pool:
            futures = [
                pool.submit(_fetch_one, artifact, root, hub, token, bar, attempts, retry_wait) for artifact in artifacts
            ]
            for future in futures:
                try:
                    results.append(future.result())
                except DownloadError as error:
                    failures.append(str(error))
    finally:
        bar.close()
    _write_hub_refs(artifacts, results, root)
    if failures:
        raise DownloadError("\n".join(failures))
    return results


def _fetch_one(
    artifact: Artifact, root: Path, hub: str, token: str | None, bar: _Progress, attempts: int, retry_wait: float
) -> Result:
    dest = root / artifact.dest
    part = _Part(dest.with_name(dest.name + layout.PARTIAL_SUFFIX))
    try:
        if dest.is_file():
            bar.skip(artifact)
            problem, digest = _verify(dest, artifact, root)
            if problem is None:
                part.remove()
                _write_record(artifact, root, dest.stat().st_size, digest)
                return Result(artifact, "present")
            log.warning("%s: %s is corrupt (%s); fetching it again", artifact.name, dest, problem)
            dest.unlink()
            layout.record_path(artifact.dest, root).unlink(missing_ok=True)
            bar.unskip(artifact)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part.open()
        bar.update(part.size)
        digest = _download_into(part, artifact, hub, token, bar, attempts, retry_wait)
        part.commit(dest)
        _write_record(artifact, root, dest.stat().st_size, digest)
    except OSError as error:  # disk full, permissions: name the file rather than show a traceback
        raise DownloadError(f"{artifact.name}: cannot write {dest}: {error}") from None
    finally:
        part.close()
    log.info("%s: %s (%d bytes, sha256 %s)", artifact.name, dest, dest.stat().st_size, digest)
    return Result(artifact, "downloaded")


def _download_into(
    part: _Part, artifact: Artifact, hub: str, token: str | None, bar: _Progress, attempts: int, retry_wait: float
) -> str:
    """Transfer (resuming) until the .part holds the verified file; return its sha256."""
    url = artifact.source_url(hub)
    headers = {"User-Agent": USER_AGENT}
    if artifact.repo_id and token:
        headers["Authorization"] = f"Bearer {token}"
    for attempt in range(1, attempts + 1):
        try:
            _transfer(url, headers, part, artifact, bar)
        except _Transient as error:
            if attempt == attempts:
                raise DownloadError(
                    f"{artifact.name}: the transfer from {url} was interrupted after {part.size} bytes ({error}). "
                    f"The partial file {part.path} is kept: run the same command again to resume."
                ) from None
            log.warning(
                "%s: %s; resuming from byte %d (attempt %d of %d)",
                artifact.name,
                error,
                part.size,
                attempt + 1,
                attempts,
            )
            time.sleep(retry_wait)
            continue
        digest = part.hasher.hexdigest()
        problem = _check(part.size, digest, artifact, _expected_size(artifact, part))
        if problem is None:
            return digest
        bar.update(-part.size)
        part.restart()
        if attempt == attempts:
            raise DownloadError(
                f"{artifact.name}: the file downloaded from {url} failed verification ({problem}); "
                f"it was deleted. The source no longer serves the pinned file, or the transfer is corrupted."
            )
        log.warning("%s: download failed verification (%s); fetching it again", artifact.name, problem)
    raise AssertionError("unreachable: every attempt returns, continues or raises")


def _transfer(url: str, headers: dict[str, str], part: _Part, artifact: Artifact, bar: _Progress) -> None:
    """One GET, appended to the .part (from its current size, with a Range header). Raises
    _Transient for what another attempt may fix, DownloadError for what it cannot."""
    start = part.size
    request_headers = dict(headers)
    if start:
        request_headers["Range"] = f"bytes={start}-"
    try:
        with requests.get(url, headers=request_headers, stream=True, timeout=TIMEOUT) as response:
            status = response.status_code
            if status == 416 and start:  # nothing left to send: the .part may already be whole
                total = _content_range_total(response.headers.get("Content-Range", ""))
                if total == start:
                    part.total = total
                    return
                bar.update(-start)
                part.restart()
                raise _Transient(f"the server refused to resume from byte {start}; starting over")
            if status == 404:
                raise DownloadError(
                    f"{artifact.name}: {artifact.source} does not exist (HTTP 404 from {url}). "
                    f"Check the repository, revision and file name in musicgen/weights/manifest.py."
                )
            if status in (401, 403):
                raise DownloadError(
                    f"{artifact.name}: access to {url} was refused (HTTP {status}); for a gated or private "
                    f"repository set HF_TOKEN to a token that can read {artifact.repo_id or 'it'}."
                )
            if status == 429 or status >= 500:
                raise _Transient(f"HTTP {status}")
            if status not in (200, 206):
                raise DownloadError(f"{artifact.name}: unexpected HTTP {status} from {url}.")
            if status == 200 and start:  # the server ignored the Range header: take the whole file
                bar.update(-start)
                part.restart()
            elif status == 206:
                range_start = _content_range_start(response.headers.get("Content-Range", ""))
                if range_start != start:
                    bar.update(-start)
                    part.restart()
                    raise _Transient(f"the server resumed at byte {range_start}, not {start}; starting over")
            part.total = _response_total(response, part.size)
            bar.learn_total(artifact, part.total)
            # read1 hands over whatever arrived, so bytes received before a drop are kept to resume
            while chunk := response.raw.read1(CHUNK, decode_content=True):
                part.write(chunk)
                bar.update(len(chunk))
    except (requests.RequestException, urllib3.exceptions.HTTPError) as error:
        raise _Transient(f"{type(error).__name__}: {error}") from None
    finally:
        part.flush()
    if part.total is not None and part.size < part.total:
        raise _Transient(f"the connection closed after {part.size} of {part.total} bytes")


def _expected_size(artifact: Artifact, part: _Part) -> int | None:
    return artifact.size if artifact.size is not None else part.total


def _check(
    size: int, digest: str, artifact: Artifact, expected_size: int | None, recorded: str | None = None
) -> str | None:
    """What is wrong with a file of this size and digest, or None when it matches."""
    if expected_size is not None and size != expected_size:
        return f"{size} bytes, expected {expected_size}"
    if artifact.sha256 and digest != artifact.sha256:
        return f"sha256 {digest}, expected {artifact.sha256}"
    if artifact.sha256_prefix and not digest.startswith(artifact.sha256_prefix):
        return f"sha256 {digest} does not start with {artifact.sha256_prefix}"
    if recorded and digest != recorded:
        return f"sha256 {digest}, but {recorded} was recorded when it was downloaded"
    return None


def _verify(path: Path, artifact: Artifact, root: Path) -> tuple[str | None, str]:
    """Check a file already in place against the manifest and the download record."""
    record = layout.read_record(artifact.dest, root)
    expected_size = artifact.size if artifact.size is not None else record.get("size")
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        return f"{size} bytes, expected {expected_size}", ""
    digest = sha256_file(path)
    return _check(size, digest, artifact, expected_size, record.get("sha256")), digest


def sha256_file(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


class _Part:
    """The `.part` file of one download, with a running SHA-256 of what it holds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hasher = hashlib.sha256()
        self.size = 0
        self.total: int | None = None  # the whole file's size, once the server said it
        self._file = None

    def open(self) -> None:
        """Open for appending; hash what an earlier, interrupted run left."""
        if self.path.is_file():
            with open(self.path, "rb") as file:
                while chunk := file.read(CHUNK * 8):
                    self.hasher.update(chunk)
                    self.size += len(chunk)
        self._file = open(self.path, "ab")

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self.hasher.update(chunk)
        self.size += len(chunk)

    def flush(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.flush()

    def restart(self) -> None:
        self._file.seek(0)
        self._file.truncate()
        self.hasher = hashlib.sha256()
        self.size = 0
        self.total = None

    def commit(self, dest: Path) -> None:
        """Make the complete, verified file visible under its final name in one atomic step."""
        self._file.close()
        atomic_files.replace(self.path, dest)

    def close(self) -> None:
        """Close after success or failure; an empty .part (nothing to resume) is removed."""
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self.size == 0:
            self.path.unlink(missing_ok=True)

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _content_range_start(value: str) -> int | None:
    """`bytes 100-199/200` -> 100."""
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _content_range_total(value: str) -> int | None:
    """`bytes 100-199/200` or `bytes */200` -> 200."""
    try:
        return int(value.rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return None


def _response_total(response: requests.Response, start: int) -> int | None:
    """The whole file's size, from Content-Range (206) or Content-Length (200)."""
    if response.status_code == 206:
        return _content_range_total(response.headers.get("Content-Range", ""))
    length = response.headers.get("Content-Length")
    return int(length) + start if length and length.isdigit() else None


def _write_record(artifact: Artifact, root: Path, size: int, digest: str) -> None:
    record = {
        "source": artifact.source,
        "size": size,
        "sha256": digest,
        "verified_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_files.write_text(layout.record_path(artifact.dest, root), json.dumps(record, indent=1) + "\n")


def _write_hub_refs(artifacts: list[Artifact], results: list[Result], root: Path) -> None:
    """Point the Hugging Face cache's refs/main at the pinned snapshot once all its files are in."""
    done = {result.artifact.dest for result in results}
    refs: dict[str, list[Artifact]] = {}
    for artifact in artifacts:
        if artifact.hub_ref:
            refs.setdefault(artifact.hub_ref, []).append(artifact)
    for ref, snapshot in refs.items():
        if all(artifact.dest in done for artifact in snapshot):
            atomic_files.write_text(root / ref, snapshot[0].revision)


class _Progress:
    """One byte-counting progress bar over every file of the run, shared by the worker threads."""

    def __init__(self, artifacts: list[Artifact], enabled: bool) -> None:
        self._lock = threading.Lock()
        self._counted: dict[str, int | None] = {a.dest: a.size for a in artifacts}
        total = sum(size for size in self._counted.values() if size)
        self._bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=not enabled,
            desc=f"{len(artifacts)} file{'s' if len(artifacts) != 1 else ''}",
            mininterval=0.5,
        )

    def _add_total(self, delta: int) -> None:
        self._bar.total = (self._bar.total or 0) + delta
        self._bar.refresh()

    def skip(self, artifact: Artifact) -> None:
        """A file already in place counts as done (its size leaves the total)."""
        with self._lock:
            if self._counted.get(artifact.dest):
                self._add_total(-self._counted[artifact.dest])

    def unskip(self, artifact: Artifact) -> None:
        with self._lock:
            if self._counted.get(artifact.dest):
                self._add_total(self._counted[artifact.dest])

    def learn_total(self, artifact: Artifact, total: int | None) -> None:
        """A file of unpublished size joins the total once the server states it."""
        with self._lock:
            if self._counted.get(artifact.dest) is None and total:
                self._counted[artifact.dest] = total
                self._add_total(total)

    def update(self, nbytes: int) -> None:
        with self._lock:
            self._bar.update(nbytes)

    def close(self) -> None:
        self._bar.close()
