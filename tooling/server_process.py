"""`python -m musicgen serve` as a child process on a free loopback port: for the tests and the soak.

The process is started in a session of its own (the server and its worker are stopped together);
its output goes to a log file; /health-check is polled until the wanted status; the worker (the
process that loads the models and runs predictions) is the server's one child.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from musicgen.serving.supervisor import free_port
from musicgen.settings import REPOSITORY
from tooling.loopback import LOOPBACK

HTTP_TIMEOUT = 10  # s for a request that does not wait for a prediction


class ServerError(RuntimeError):
    """The server exited, or did not reach the wanted status in time. The message ends with its log."""


class ServerProcess:
    """A `python -m musicgen serve [args]` process, its log, and its environment (`env`: added to
    this process's; MUSICGEN_WEIGHTS is `weights`)."""

    def __init__(self, weights: Path, log_path: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.log_path = Path(log_path)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "musicgen", "serve", "--host", LOOPBACK, "--port", str(self.port), *args],
            cwd=REPOSITORY,
            env={**os.environ, "MUSICGEN_WEIGHTS": str(weights), **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, characters: int = 4000) -> str:
        return self.log_text()[-characters:]

    def health(self) -> dict:
        return requests.get(f"{self.url}/health-check", timeout=HTTP_TIMEOUT).json()

    def ready(self, timeout: float) -> ServerProcess:
        """This server once READY; stopped (and the error raised) when it does not get there."""
        try:
            self.wait_for({"READY"}, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_for(self, statuses: set[str], timeout: float) -> dict:
        """Poll /health-check until its status is one of `statuses`; ServerError otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                health = self.health()
                if health.get("status") in statuses:
                    return health
            except requests.ConnectionError:
                pass  # not listening yet
            time.sleep(0.5)
        raise ServerError(f"server not {statuses} after {timeout} s:\n{self.log_tail()}")

    def worker_pid(self) -> int:
        """The runtime's worker process (the one that loads the models): `serve` (the supervisor)
        starts the Cog server, which starts its worker; each is the other's one child (started from
        one of its threads: each thread lists its own children)."""
        return self._only_child(self.server_pid(), "the Cog server")

    def server_pid(self) -> int:
        """The Cog server's process (coglet's HTTP side), `serve`'s one child."""
        return self._only_child(self.process.pid, "the supervisor")

    @staticmethod
    def _only_child(pid: int, what: str) -> int:
        tasks = Path(f"/proc/{pid}/task")
        children = {child for task in tasks.iterdir() for child in (task / "children").read_text().split()}
        if len(children) != 1:
            raise ServerError(f"{what} has {len(children)} child processes, expected one")
        return int(children.pop())

    def worker_rss(self) -> int:
        """The worker's resident memory in bytes (VmRSS)."""
        for line in Path(f"/proc/{self.worker_pid()}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ServerError("the worker's /proc status has no VmRSS")

    def stop(self) -> None:
        """SIGTERM the server's process group (the server and its worker), then SIGKILL if needed."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()
