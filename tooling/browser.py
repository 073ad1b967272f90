"""Debian's Chromium, headless, driven through the DevTools protocol: for the tests of the listening page.

    with HeadlessChromium() as browser:
        browser.open("http://127.0.0.1:8080/listen/")
        browser.evaluate("document.querySelector('button').click()")
        browser.wait_for("window.listenState.done", timeout=60)
        browser.screenshot(path)

Started with the flags this machine needs (no sandbox as root, no GPU, no background network) and
with autoplay allowed, so that a page's AudioContext plays without a person's click. Nothing is
fetched from outside: the page and what it asks for are on loopback.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import requests
import websocket

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--remote-debugging-port=0",
    "--window-size=1000,900",
)


class BrowserError(RuntimeError):
    pass


class HeadlessChromium:
    def __init__(self, executable: str = CHROMIUM, timeout: float = 60):
        if not Path(executable).is_file():
            raise BrowserError(f"{executable} not found: Debian's chromium package (scripts/setup.sh installs it)")
        self.profile = Path(tempfile.mkdtemp(prefix="musicgen-chromium-"))
        self.process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._ids = itertools.count(1)
        port = self._devtools_port(timeout)
        targets = requests.get(f"http://127.0.0.1:{port}/json", timeout=10).json()
        page = next(target for target in targets if target.get("type") == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout)
        self.call("Page.enable")
        self.call("Runtime.enable")

    def _devtools_port(self, timeout: float) -> int:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not marker.is_file() or not marker.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise BrowserError("chromium did not start")
            time.sleep(0.1)
        return int(marker.read_text().split()[0])

    def call(self, method: str, **params) -> dict:
        """One DevTools command; its result (events arriving meanwhile are skipped)."""
        message_id = next(self._ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            answer = json.loads(self.socket.recv())
            if answer.get("id") == message_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def open(self, url: str, timeout: float = 30) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'", timeout)

    def evaluate(self, expression: str) -> object:
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float) -> object:
        """Poll `expression` until it is truthy; BrowserError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"{expression} still false after {timeout} s")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        if getattr(self, "socket", None) is not None:
            self.socket.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> HeadlessChromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
