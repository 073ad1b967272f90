"""HTTP servers on a free loopback port, served from a daemon thread: the stand-in hosts the tests
and the soak point the service at (input files, hostile senders, a stand-in model hub)."""

from __future__ import annotations

import functools
import threading
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LOOPBACK = "127.0.0.1"


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing (pytest's output stays clean): the base of the tests' stand-in hosts."""

    def log_message(self, *args) -> None:
        pass


class QuietFileHandler(QuietHandler, SimpleHTTPRequestHandler):
    """Serves files from its `directory`, logging nothing."""


class LoopbackServer:
    """An HTTP server on a free loopback port, serving in a daemon thread until close().

    Give `handler` (a request handler class), or `directory` to serve that folder's files.
    `server_class` lets a caller change how the server handles errors.
    """

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler] | None = None,
        *,
        directory: Path | None = None,
        server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer,
    ) -> None:
        if handler is None:
            handler = functools.partial(QuietFileHandler, directory=str(directory))
        self.httpd = server_class((LOOPBACK, 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
