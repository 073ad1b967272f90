"""Outputs PUT to `serve --upload-url`: each prediction's file has a name of its own.

Two callers with the same seed and model used to get the same upload name (`musicgen-melody-7.wav`),
so one heard the other's music; the name now also holds a digest of the audio: readable, unique per
content, and the same again for the same inputs and seed.
"""

from __future__ import annotations

import re
import threading

import pytest
from helpers import START_TIMEOUT, LoopbackServer, Server

from tooling.loopback import QuietHandler

pytestmark = pytest.mark.slow  # a server of its own


class Uploads(LoopbackServer):
    """Takes PUTs and keeps each body by its path."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(QuietHandler):
            def do_PUT(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.files[self.path] = body
                self.send_response(200)
                self.end_headers()

        super().__init__(Handler)


@pytest.fixture(scope="module")
def uploading(demo_weights, tmp_path_factory):
    uploads = Uploads()
    server = Server(
        demo_weights, tmp_path_factory.mktemp("uploads") / "serve.log", args=("--upload-url", f"{uploads.url}/")
    )
    try:
        server.wait_for({"READY"}, START_TIMEOUT)
        yield server, uploads
    finally:
        server.stop()
        uploads.close()


def test_two_callers_with_the_same_seed_get_two_names(uploading):
    server, uploads = uploading
    first = server.predict(prompt="calm piano", duration=1, seed=7)
    second = server.predict(prompt="loud drums", duration=1, seed=7)
    assert first["status"] == second["status"] == "succeeded", (first.get("error"), second.get("error"))
    assert first["output"] != second["output"]
    for answer in (first, second):
        name = answer["output"].rsplit("/", 1)[1]
        assert re.fullmatch(r"musicgen-melody-7-[0-9a-f]{12}\.wav", name), name
        assert f"/{name}" in uploads.files and uploads.files[f"/{name}"][:4] == b"RIFF"
    assert (
        uploads.files[f"/{first['output'].rsplit('/', 1)[1]}"]
        != uploads.files[f"/{second['output'].rsplit('/', 1)[1]}"]
    )
    again = server.predict(prompt="calm piano", duration=1, seed=7)
    assert again["output"] == first["output"]  # the same inputs and seed: the same bytes, the same name
