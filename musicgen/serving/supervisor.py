"""`serve`'s own process: the Cog server's parent, which turns SIGTERM into a drain that loses nothing.

coglet on SIGTERM waits for the synchronous requests in flight but drops running and queued async
predictions without a terminal webhook (measured on cog 0.23.1). So `serve` starts the server as
its child and keeps SIGTERM for itself (Kubernetes and `docker stop` send it to the container's
first process only):

1. it asks the worker to drain (POST /drain on the worker's probes port, from 127.0.0.1): the
   worker stops taking predictions (readiness fails; a new one fails at once, saying the server is
   shutting down), lets the running ones finish within MUSICGEN_DRAIN_SECONDS, and ends the rest
   as failed with that message, so the runtime sends each its terminal webhook;
2. it waits SETTLE_SECONDS for the runtime to send those webhooks, then sends the server SIGTERM
   and exits with its exit status.

Without MUSICGEN_METRICS_PORT the worker's probes port is opened on 127.0.0.1 for the drain alone.
A `serve --train` server is not drained (one training, synchronous: coglet waits for it). SIGINT
(Ctrl-C) reaches the server directly, as the terminal sends it to the whole process group. The
server dies with this process (PR_SET_PDEATHSIG), so a killed `serve` leaves no orphan.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from musicgen.errors import SettingsError
from musicgen.settings import METRICS_ENV, Settings, read_settings

log = logging.getLogger(__name__)

SETTLE_SECONDS = 1.0  # after the drain: the runtime sends the stopped predictions' webhooks
STOP_MARGIN_SECONDS = 30.0  # the drain's answer may come this long after its deadline (stopping, ending)
PR_SET_PDEATHSIG = 1


def supervise(command: list[str], env: dict[str, str], drains: bool) -> None:
    """Run `command` (the Cog server) with `env` as this process's child until it exits; exit with
    its status. `drains`: SIGTERM drains the worker first (predict mode)."""
    try:
        settings = read_settings(env)
    except SettingsError:
        settings = Settings()  # the worker's setup() refuses the bad setting, naming it
    address = settings.metrics_address
    if drains and address is None:
        address = ("127.0.0.1", free_port())
        env = {**env, METRICS_ENV: f"127.0.0.1:{address[1]}"}
    server = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)
    stopping = threading.Event()

    def on_sigterm(signum, frame) -> None:
        if not stopping.is_set():
            stopping.set()
            stop = (
                functools.partial(_drain_then_stop, server, address, settings.drain_seconds)
                if drains
                else server.terminate
            )
            threading.Thread(target=stop, daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server gets the terminal's Ctrl-C itself
    sys.exit(server.wait())


def _drain_then_stop(server: subprocess.Popen, address: tuple[str, int], drain_seconds: float) -> None:
    host = "127.0.0.1" if address[0] in ("0.0.0.0", "") else address[0]
    log.info("SIGTERM: draining the worker (running predictions get up to %g s)", drain_seconds)
    request = urllib.request.Request(f"http://{host}:{address[1]}/drain", data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=drain_seconds + STOP_MARGIN_SECONDS) as answer:
            log.info("drained: %s", json.loads(answer.read()))
        time.sleep(SETTLE_SECONDS)
    except (OSError, urllib.error.URLError, ValueError) as error:  # no worker to drain (gone, or never set up)
        log.warning("the worker could not be drained (%s); stopping the server", error)
    log.info("stopping the Cog server")
    server.terminate()  # SIGTERM: the runtime waits for its synchronous requests, then exits


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """(In the child, before exec.) SIGTERM when this process dies, whatever kills it (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: a killed `serve` may leave its server running
