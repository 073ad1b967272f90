"""The worker's own port (MUSICGEN_METRICS_PORT): probes that answer with status codes, Prometheus'
metrics, and the drain `serve` asks for on SIGTERM.

Cog's /health-check answers 200 whatever its JSON says (SETUP_FAILED, BUSY, a dead worker's
UNHEALTHY), and Kubernetes' HTTP probes read the status code only. Here:

- GET /livez: 200 while this worker serves and its batched path makes progress; 503 while setup
  runs (loading models: a startup probe waits for it), when setup failed, or when the batched path
  is stuck (windows to step, no step for MUSICGEN_STALL_SECONDS). A dead worker's port refuses
  connections: a probe reads that as a failure too.
- GET /readyz: 200 when setup succeeded, no drain has begun and a batch place is free (fewer
  predictions in the worker than MUSICGEN_MAX_BATCH); else 503, so a Service sends the next
  request to another replica instead of this one's queue or its 409.
- GET /metrics: Prometheus' text format (musicgen.serving.metrics).
- POST /drain (from 127.0.0.1 only: `serve`'s own process on SIGTERM): stop taking predictions,
  let the running ones finish within MUSICGEN_DRAIN_SECONDS, end the rest as failed saying the
  server is shutting down; answers when none is left (PredictionRunner.drain).

Every answer is JSON but /metrics; the body names the state and why (`reason`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from musicgen.serving.metrics import REGISTRY, ServiceCollector

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "::1")


class Probes:
    """The worker's state as the probes report it, and the server that reports it."""

    def __init__(self, address: tuple[str, int]):
        self.address = address
        self.runner = None  # the PredictionRunner, once setup succeeded
        self.failure: str | None = None  # why setup failed
        self._server: ThreadingHTTPServer | None = None
        self._collector: ServiceCollector | None = None

    def start(self) -> Probes:
        """Listen on `address` in a daemon thread (a port already taken is logged, not fatal)."""
        try:
            self._server = ThreadingHTTPServer(self.address, _handler(self))
        except OSError as error:
            log.error("the probes and metrics port %s:%d cannot be opened: %s", *self.address, error.strerror)
            return self
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="musicgen-probes", daemon=True).start()
        log.info("probes and metrics on http://%s:%d (/livez, /readyz, /metrics)", *self.address)
        return self

    def serving(self, runner) -> None:
        """Setup succeeded: `runner` takes predictions (its metrics are collected from now on)."""
        self.runner = runner
        self._collector = ServiceCollector(runner)
        REGISTRY.register(self._collector)

    def stop(self) -> None:
        """Close the port and stop collecting the runner's metrics (the worker's exit does both)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._collector is not None:
            REGISTRY.unregister(self._collector)

    def setup_failed(self, error: BaseException) -> None:
        self.failure = f"setup failed: {type(error).__name__}: {error}"

    def live(self) -> tuple[bool, str]:
        if self.failure is not None:
            return False, self.failure
        if self.runner is None:
            return False, "setting up"
        batcher = self.runner.service.models.batcher
        stalled = None if batcher is None else batcher.stalled()
        return (False, f"the batched path is stuck: {stalled}") if stalled else (True, "serving")

    def ready(self) -> tuple[bool, str]:
        if self.failure is not None:
            return False, self.failure
        if self.runner is None:
            return False, "setting up"
        if self.runner.draining:
            return False, "draining: the server is shutting down"
        places, in_flight = self.runner.places, self.runner.in_flight
        if in_flight >= places:
            return False, f"every batch place is taken ({in_flight} predictions, {places} places)"
        return True, f"{in_flight} of {places} batch places taken"


def _handler(probes: Probes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif self.path in ("/livez", "/readyz"):
                ok, reason = probes.live() if self.path == "/livez" else probes.ready()
                self._json(
                    200 if ok else 503, {"status": "ok" if ok else "failing", "reason": reason, "pid": os.getpid()}
                )
            else:
                self._json(404, {"error": "not found: /livez, /readyz, /metrics"})

        def do_POST(self) -> None:
            if self.path != "/drain":
                self._json(404, {"error": "not found"})
            elif self.client_address[0] not in LOOPBACK:
                self._json(403, {"error": "only the server's own process may drain it"})
            elif probes.runner is None:
                self._json(200, {"finished": 0, "stopped": 0, "reason": probes.failure or "setting up"})
            else:
                self._json(200, probes.runner.drain())

        def _json(self, status: int, body: dict) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
            pass  # a probe every few seconds: not worth a log line

    return Handler
