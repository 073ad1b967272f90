"""A file input given as a URL (input_audio, lora_weights, a training's dataset): http(s) fetched
under a deadline and a size cap, data: URIs decoded.

Over HTTP every file input is a URL (musicgen.serving.runtime_patches keeps Cog from downloading it
first), so a caller cannot make the server read its own files, hold a prediction slot with a slow
sender, or fill the disk with an endless body. The transfer runs in a helper thread while the
calling thread waits in short steps: the deadline holds whatever the sender does, and a cancel
stops the wait at once, closes the connection and removes the partial file. A watchdog timer ends
the transfer at the deadline even when nobody waits for it. Every failure is an InputError naming
the input, the host and what to do; no library text reaches the caller.
"""

from __future__ import annotations

import base64
import binascii
import http
import logging
import queue
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import requests

from musicgen import cancellation
from musicgen.errors import InputError
from musicgen.input_rules import URL_SCHEMES, shortened
from musicgen.settings import Settings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # seconds to open the connection
STALL_TIMEOUT = 30.0  # seconds without a byte before the helper thread gives up on its own
WAIT_STEP = 0.05  # seconds between two looks of the waiting thread (the cancel latency)
CHUNK = 1 << 16  # bytes per read
MAX_REDIRECTS = 5
# A requests failure (first match wins) -> what the caller reads after "the download from <host> failed: ".
_FAILURE_REASONS = (
    (requests.exceptions.SSLError, "the TLS connection could not be verified"),
    (requests.exceptions.ConnectTimeout, f"no connection within {CONNECT_TIMEOUT:g} s"),
    (requests.exceptions.ReadTimeout, f"the server sent nothing for {STALL_TIMEOUT:g} s"),
    (requests.exceptions.ChunkedEncodingError, "the connection closed before the whole file had arrived"),
    (requests.exceptions.TooManyRedirects, f"more than {MAX_REDIRECTS} redirects"),
)
USER_AGENT = "musicgen-cog-input/1"
MEGABYTE = 1_000_000


@dataclass(frozen=True)
class FetchLimits:
    """What one input download may take: `timeout` seconds in all, `max_bytes` bytes."""

    timeout: float
    max_bytes: int
    cap_setting: str = "MUSICGEN_INPUT_MAX_MB"  # the setting `max_bytes` comes from, for messages
    advice: str = "Send a compressed format (FLAC, MP3, ...) or a shorter file."  # what a caller over it can do

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchLimits:
        """The operator's limits: MUSICGEN_INPUT_TIMEOUT (s) and MUSICGEN_INPUT_MAX_MB (10^6 bytes)."""
        return cls(timeout=settings.input_timeout, max_bytes=int(settings.input_max_mb * MEGABYTE))

    @classmethod
    def for_adapters(cls, settings: Settings) -> FetchLimits:
        """A request's lora_weights: MUSICGEN_INPUT_TIMEOUT (s) and MUSICGEN_LORA_MAX_MB (10^6 bytes)."""
        advice = "Train the adapter with a lower lora_rank."
        return cls(settings.input_timeout, int(settings.lora_max_mb * MEGABYTE), "MUSICGEN_LORA_MAX_MB", advice)

    @classmethod
    def for_datasets(cls, settings: Settings) -> FetchLimits:
        """A training's dataset: MUSICGEN_INPUT_TIMEOUT (s) and MUSICGEN_DATASET_MAX_MB (10^6 bytes)."""
        advice = "Send a smaller archive, or compressed audio in it (FLAC, MP3, ...)."
        return cls(settings.input_timeout, int(settings.dataset_max_mb * MEGABYTE), "MUSICGEN_DATASET_MAX_MB", advice)

    def describe(self) -> str:
        return f"{self.timeout:g} s and {self.max_bytes / MEGABYTE:g} MB per input (MUSICGEN_INPUT_TIMEOUT, {self.cap_setting})"


def fetch(url: str, folder: Path, limits: FetchLimits, name: str = "input_audio") -> Path:
    """Write the content of `url` (http, https or data:) into `folder`; return the file's path.

    Raises InputError when the URL is malformed, the server refuses or cannot be reached, the body
    is larger than `limits.max_bytes`, or the transfer has not finished after `limits.timeout`
    seconds. On any failure (cancellation included) no partial file is left in `folder`.
    """
    scheme = url.partition(":")[0].lower()
    if scheme not in URL_SCHEMES:
        raise InputError(f"{name} must be an http(s) URL or a data: URI.")
    dest = Path(folder) / "input"
    if scheme == "data":
        _write_data_uri(url, dest, limits, name)
    else:
        _Transfer(url, dest, limits, name).run()
    return dest


def _write_data_uri(url: str, dest: Path, limits: FetchLimits, name: str) -> None:
    """RFC 2397: data:[<media type>][;base64],<data>."""
    header, comma, payload = url[len("data:") :].partition(",")
    if not comma:
        raise InputError(
            f"{name} is a data: URI without a comma; write it as data:<media type>;base64,<base64 data> "
            f"(e.g. data:audio/wav;base64,UklGR...)."
        )
    is_base64 = header.lower().split(";")[-1].strip() == "base64"
    limit = f"at most {limits.max_bytes / MEGABYTE:g} MB ({limits.cap_setting})"
    if (len(payload) * 3 // 4 if is_base64 else len(payload)) > limits.max_bytes:
        raise InputError(
            f"{name} (a data: URI) holds more than {limits.max_bytes / MEGABYTE:g} MB; {limit} is allowed."
        )
    if is_base64:
        try:
            content = base64.b64decode("".join(payload.split()), validate=True)
        except (binascii.Error, ValueError):
            raise InputError(
                f"{name} is a data: URI marked base64 whose data is not valid base64; "
                f"encode the file with standard base64 (RFC 4648)."
            ) from None
    else:
        content = urllib.parse.unquote_to_bytes(payload)
    if len(content) > limits.max_bytes:
        raise InputError(f"{name} (a data: URI) holds {len(content) / MEGABYTE:.1f} MB; {limit} is allowed.")
    dest.write_bytes(content)


class _TrackingAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter, handing the socket of every connection it opens to `on_socket` once
    connected: the waiting thread can then end a transfer, even one still waiting for its headers
    (a connection lets go of its socket once the response owns it: hence the socket itself)."""

    def __init__(self, on_socket):
        self._on_socket = on_socket
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        on_socket = self._on_socket
        pools = self.poolmanager.pool_classes_by_scheme

        def tracking(pool_class):
            class TrackingPool(pool_class):
                def _get_conn(self, timeout=None):
                    connection = super()._get_conn(timeout)
                    connect = connection.connect

                    def connect_and_report():
                        connect()
                        on_socket(connection.sock)

                    connection.connect = connect_and_report
                    return connection

            return TrackingPool

        self.poolmanager.pool_classes_by_scheme = {scheme: tracking(pool) for scheme, pool in pools.items()}


class _Transfer:
    """One http(s) download: a helper thread reads into `dest`, the caller waits in WAIT_STEPs."""

    def __init__(self, url: str, dest: Path, limits: FetchLimits, name: str):
        self.url, self.dest, self.limits, self.name = url, dest, limits, name
        parsed = urllib.parse.urlsplit(url)
        try:
            self.host = parsed.hostname or ""
            if parsed.port:
                self.host += f":{parsed.port}"
        except ValueError:  # a port that is not a number
            self.host = ""
        if not self.host:
            raise InputError(f"{name}={shortened(url)!r} is not a valid URL: it names no host.")
        # Flags and a C queue, not threading.Events: a cancel landing inside an Event's Python code
        # could leave its inner lock taken, and the helper thread would wait for ever (cancellation.py).
        self.done: queue.SimpleQueue = queue.SimpleQueue()  # the helper puts one None when it ends
        self.aborted = False
        self.error: InputError | None = None
        self.complete = False  # set by the helper thread when the whole body is in `dest`
        self.sockets: list[socket.socket] = []  # every socket the helper's session opened (redirects too)
        self.lock = threading.Lock()  # guards `sockets` between the two threads
        self.deadline = 0.0  # time.monotonic() by which the transfer ends: set by start()
        self.watchdog: threading.Timer | None = None

    def start(self) -> threading.Thread:
        """Start the helper thread, and a watchdog that ends the transfer at the deadline even if
        nobody waits for it any more (the runtime may raise a cancel twice, the second in the
        first one's clean-up): no connection or partial file outlives the deadline."""
        self.deadline = time.monotonic() + self.limits.timeout
        helper = threading.Thread(target=self._download, name="musicgen-input-fetch", daemon=True)
        self.watchdog = threading.Timer(self.limits.timeout, self._abort)
        self.watchdog.daemon = True
        self.watchdog.start()
        helper.start()
        return helper

    def run(self) -> None:
        helper = self.start()
        try:
            while not self._ended():  # returns to Python every step: a cancel lands here
                cancellation.check()
                if time.monotonic() > self.deadline:
                    raise self._late()
            if self.complete:
                return
            if time.monotonic() > self.deadline:  # the watchdog stopped it first
                raise self._late()
            raise self.error or InputError(f"{self.name}: the download from {self.host} was stopped.")
        except BaseException:
            self._stop(helper)
            raise

    def _ended(self) -> bool:
        """Whether the helper thread has ended, waiting at most WAIT_STEP for it."""
        try:
            self.done.get(timeout=WAIT_STEP)
        except queue.Empty:
            return False
        return True

    def _late(self) -> InputError:
        return InputError(
            f"{self.name}: the download from {self.host} did not finish within {self.limits.timeout:g} s "
            f"(this server's limit, MUSICGEN_INPUT_TIMEOUT); use a faster host, or a smaller file."
        )

    def _stop(self, helper: threading.Thread) -> None:
        """End the transfer and remove its partial file; a second cancel landing meanwhile makes it
        start again (should one still get past this, the watchdog and the helper finish the job)."""
        while True:
            try:
                self._abort()
                helper.join(timeout=1.0)
                self.dest.unlink(missing_ok=True)
                return
            except BaseException:  # a second cancel: the clean-up first, the first cancel is raised after
                continue

    def _abort(self) -> None:
        """Stop the helper thread and end its connections now, from this thread: shutting a socket
        down both ways sends the sender its FIN at once and wakes the helper's blocked read (of
        the headers or of the body); the helper then closes it. (Left to the helper alone, a
        connection stayed open for as long as a loaded machine took to schedule it, and one still
        waiting for its headers until STALL_TIMEOUT.)"""
        self.aborted = True
        with self.lock:
            sockets = list(self.sockets)
        for sock in sockets:  # (one still connecting reports itself later: _track)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

    def _download(self) -> None:
        try:
            self._transfer()
        except InputError as error:
            self.error = error
        except requests.RequestException as error:
            self.error = InputError(self._describe(error))
        except OSError as error:
            self.error = InputError(
                f"{self.name}: the download from {self.host} failed ({error.strerror or 'I/O error'})."
            )
        except Exception:  # anything else the HTTP stack raises: a failed download, never a complete one
            log.warning("download from %s failed", self.host, exc_info=True)
            self.error = InputError(f"{self.name}: the download from {self.host} failed.")
        else:
            self.complete = not self.aborted
        finally:
            self.watchdog.cancel()
            if not self.complete:  # the helper owns its partial file
                self.dest.unlink(missing_ok=True)
            self.done.put(None)

    def _track(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.append(sock)
        if self.aborted:  # aborted while it was connecting
            self._abort()

    def _transfer(self) -> None:
        session = requests.Session()
        session.max_redirects = MAX_REDIRECTS
        for scheme in ("http://", "https://"):
            session.mount(scheme, _TrackingAdapter(self._track))
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        with session:
            response = session.get(
                self.url, stream=True, timeout=(CONNECT_TIMEOUT, STALL_TIMEOUT), headers=headers, allow_redirects=True
            )
            if self.aborted:
                response.close()
                return
            with response:
                if response.status_code >= 400:
                    reason = f" {_standard_reason(response.status_code)}"
                    raise InputError(
                        f"{self.name}: {self.host} answered HTTP {response.status_code}{reason} for this URL; "
                        f"check that the URL is right and publicly readable."
                    )
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > self.limits.max_bytes:
                    raise InputError(self._too_large(f"is {int(declared) / MEGABYTE:.1f} MB"))
                self._copy(response)

    def _copy(self, response: requests.Response) -> None:
        received = 0
        with open(self.dest, "wb") as file:
            for chunk in response.iter_content(CHUNK):
                if self.aborted:
                    return
                received += len(chunk)
                if received > self.limits.max_bytes:
                    raise InputError(self._too_large(f"is larger than {self.limits.max_bytes / MEGABYTE:g} MB"))
                file.write(chunk)

    def _too_large(self, size: str) -> str:
        return (
            f"{self.name} from {self.host} {size}; this server accepts at most "
            f"{self.limits.max_bytes / MEGABYTE:g} MB per input ({self.limits.cap_setting}). {self.limits.advice}"
        )

    def _describe(self, error: requests.RequestException) -> str:
        """A requests failure in words the caller can act on (no pool or socket internals)."""
        where = f"{self.name}: the download from {self.host}"
        if self.aborted:
            return f"{where} was stopped."
        for kind, reason in _FAILURE_REASONS:  # in this order: the first ones are ConnectionErrors too
            if isinstance(error, kind):
                return f"{where} failed: {reason}."
        if isinstance(error, requests.exceptions.ConnectionError):
            text = str(error)
            if "Name or service not known" in text or "NameResolutionError" in text or "nodename nor servname" in text:
                return f"{where} failed: the host name could not be resolved."
            if "refused" in text:
                return f"{where} failed: the connection was refused."
            return f"{where} failed: the connection was lost."
        if isinstance(error, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema)):
            return f"{self.name}={shortened(self.url)!r} is not a valid URL."
        return f"{where} failed."


def _standard_reason(status: int) -> str:
    """The standard phrase of an HTTP status (not the remote server's own text, which it chooses)."""
    return {known.value: known.phrase for known in http.HTTPStatus}.get(status, "(an unknown status)")
