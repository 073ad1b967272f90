"""musicgen.audio.fetch on its own: data: URIs, the operator's limits, and http(s) transfers from
local senders (refusals, the cap, the deadline, a cancel raised in the waiting thread)."""

from __future__ import annotations

import base64
import re
import threading
import time

import pytest
from helpers import HostileSenders

from musicgen.audio.fetch import STALL_TIMEOUT, FetchLimits, _Transfer, fetch
from musicgen.cancellation import cancel, clear
from musicgen.errors import InputError, PredictionCancelled
from musicgen.settings import Settings, read_settings

LIMITS = FetchLimits(timeout=3, max_bytes=100_000)


@pytest.fixture
def sender():
    sender = HostileSenders()
    yield sender
    sender.close()


# How long the sender may wait to see the connection end: far less than the 30 s after which the
# helper thread would give up on a silent sender by itself (fetch.STALL_TIMEOUT), far more than a
# loaded machine takes to schedule the threads.
CLOSE_BOUND = 15.0  # seconds
assert CLOSE_BOUND < STALL_TIMEOUT


def _went_away(sender: HostileSenders, path: str) -> bool:
    return sender.wait_closed(path, CLOSE_BOUND)


def test_limits_come_from_the_settings():
    assert FetchLimits.from_settings(Settings()) == FetchLimits(timeout=120.0, max_bytes=400_000_000)
    limits = FetchLimits.from_settings(read_settings({"MUSICGEN_INPUT_TIMEOUT": "30", "MUSICGEN_INPUT_MAX_MB": "2.5"}))
    assert limits == FetchLimits(timeout=30.0, max_bytes=2_500_000)


@pytest.mark.parametrize(
    "uri, content",
    [
        (f"data:audio/wav;base64,{base64.b64encode(b'RIFF-data').decode()}", b"RIFF-data"),
        ("data:audio/wav;base64,UklG\nRg==", b"RIFF"),  # line breaks in base64 are skipped
        ("data:,plain%20text", b"plain text"),  # percent-encoded
    ],
)
def test_a_data_uri_is_written_as_its_content(tmp_path, uri, content):
    assert fetch(uri, tmp_path, LIMITS).read_bytes() == content


@pytest.mark.parametrize(
    "uri, message",
    [
        ("data:audio/wav;base64", "input_audio is a data: URI without a comma"),
        ("data:audio/wav;base64,@@@", "not valid base64"),
        ("data:audio/wav;base64," + "A" * 200_000, "holds more than 0.1 MB; at most 0.1 MB (MUSICGEN_INPUT_MAX_MB)"),
        ("ftp://example.com/a.wav", "input_audio must be an http(s) URL or a data: URI."),
        ("http:///a.wav", "is not a valid URL: it names no host."),
    ],
)
def test_bad_uris_are_refused_naming_input_audio(tmp_path, uri, message):
    with pytest.raises(InputError, match=re.escape(message)):
        fetch(uri, tmp_path, LIMITS)
    assert list(tmp_path.iterdir()) == []


def test_an_http_file_within_the_limits_is_fetched(tmp_path, sender):
    assert fetch(f"{sender.url}/file", tmp_path, LIMITS).read_bytes() == b"a" * 1000


@pytest.mark.parametrize(
    "path, message",
    [
        ("/missing", "answered HTTP 404 Not Found for this URL"),
        ("/slow", "is 0.2 MB; this server accepts at most 0.1 MB per input (MUSICGEN_INPUT_MAX_MB)"),
        ("/endless", "is larger than 0.1 MB; this server accepts at most 0.1 MB per input"),
    ],
)
def test_refusals_and_the_cap_leave_no_file(tmp_path, sender, path, message):
    with pytest.raises(InputError, match=re.escape(message)):
        fetch(f"{sender.url}{path}", tmp_path, LIMITS)
    assert list(tmp_path.iterdir()) == []


def test_the_deadline_holds_against_a_silent_sender(tmp_path, sender):
    start = time.monotonic()
    with pytest.raises(InputError, match="did not finish within 3 s"):
        fetch(f"{sender.url}/hang", tmp_path, LIMITS)
    assert 3 <= time.monotonic() - start < CLOSE_BOUND  # the deadline, not the stall timeout, ended it
    assert list(tmp_path.iterdir()) == []
    assert _went_away(sender, "/hang"), "the connection was left open"


@pytest.mark.parametrize("path", ["/hang", "/mute"])  # waiting for the body; for the headers
def test_the_deadline_ends_the_connection_whatever_the_sender_holds_back(tmp_path, sender, path):
    start = time.monotonic()
    with pytest.raises(InputError, match="did not finish within 3 s"):
        fetch(f"{sender.url}{path}", tmp_path, LIMITS)
    assert _went_away(sender, path), "the connection was left open"
    assert time.monotonic() - start < CLOSE_BOUND  # not held until the helper's own 30 s stall timeout


@pytest.mark.parametrize("path", ["/hang", "/mute"])  # waiting for the body; for the headers
def test_a_cancel_in_the_waiting_thread_stops_the_transfer_at_once(tmp_path, sender, path):
    """Cog's runtime cancels by raising an exception in the predicting thread: the wait ends,
    the connection closes and the partial file goes."""
    outcome = {}

    def download():
        try:
            fetch(f"{sender.url}{path}", tmp_path, FetchLimits(timeout=60, max_bytes=10**6))
        except BaseException as error:  # the injected cancel
            outcome["error"], outcome["at"] = error, time.monotonic()

    thread = threading.Thread(target=download)
    thread.start()
    assert sender.started.wait(5)
    cancelled = time.monotonic()
    cancel(thread.ident)
    thread.join(5)
    clear(thread.ident)
    assert isinstance(outcome["error"], PredictionCancelled)
    assert outcome["at"] - cancelled < CLOSE_BOUND  # at once: not after the 60 s deadline
    assert _went_away(sender, path), "the connection was left open"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", ["/hang", "/mute", "/slow"])  # no body; no headers; a trickle
def test_the_helper_thread_alone_ends_the_transfer_at_the_deadline(tmp_path, sender, path):
    """The waiting thread may be gone (the runtime can raise a cancel twice, the second in the
    first one's clean-up): the transfer's watchdog keeps the deadline on its own, so the
    connection ends and the partial file goes by then, not after the 30 s stall timeout (or
    never, for a trickle)."""
    limits = FetchLimits(timeout=LIMITS.timeout, max_bytes=10**6)  # /slow's declared length is within it
    transfer = _Transfer(f"{sender.url}{path}", tmp_path / "input", limits, "input_audio")
    start = time.monotonic()
    helper = transfer.start()  # and nobody waits for it
    helper.join(LIMITS.timeout + 5)
    assert not helper.is_alive()
    assert time.monotonic() - start < LIMITS.timeout + 2
    assert not transfer.complete
    assert _went_away(sender, path), "the connection was left open"
    assert list(tmp_path.iterdir()) == []
