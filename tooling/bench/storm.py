"""A storm of cancels against a batching server: callers start async predictions of every mode and
cancel each one soon after, beside a running sync prediction; then the server must still serve.

    python -m tooling.bench.storm [--callers 3] [--cancels 100] [--batch 4] [--json FILE]

The server runs on the demo weights with MUSICGEN_MAX_BATCH=--batch (the CUDA default, 4). Each
caller sends an async prediction (text, melody, continuation, encode-decode, a stereo model, 45 s
past one window, in turn) with a webhook, waits 0 to 0.6 s, cancels it, and goes on until it has
cancelled --cancels; a sync prediction runs beside them all along. Afterwards every prediction has
had its terminal webhook, /health-check says READY and a new prediction succeeds. Prints what it
saw; exits 1 when any of that fails. tests/test_batching.py runs a short storm in the suite; this
is the long one, run by command (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests
import soundfile

from tooling.loopback import LoopbackServer, QuietHandler
from tooling.server_process import HTTP_TIMEOUT, ServerProcess
from tooling.signals import scale

START_TIMEOUT = 600  # s: the demo weights load in seconds, on a busy 2-core machine in more
SETTLE_TIMEOUT = 120  # s for the last cancelled predictions to end and the server to say READY
PREDICT_TIMEOUT = 300  # s for one prediction on the demo weights
LATEST_CANCEL = 0.6  # s after the start: the cancel lands anywhere from the queue to the decode


def melody_uri(seconds: float = 3.0, rate: int = 16000) -> str:
    """A rising scale as a WAV data: URI (the melody, the continuation's prompt, the round trip)."""
    tone = scale(seconds, rate)
    buffer = io.BytesIO()
    soundfile.write(buffer, tone, rate, format="WAV", subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode()


def mixed_modes() -> list[dict]:
    """One request of each mode the callers cycle through."""
    melody = melody_uri()
    return [
        {"model_version": "large", "prompt": "storm", "duration": 4},
        {"model_version": "melody", "prompt": "strings", "input_audio": melody, "duration": 3},
        {"model_version": "large", "prompt": "on", "input_audio": melody, "continuation": True, "duration": 3},
        {"model_version": "encode-decode", "input_audio": melody},
        {"model_version": "stereo-large", "prompt": "wide", "negative_prompt": "drums", "duration": 3},
        {"model_version": "large", "prompt": "long", "duration": 45, "top_p": 0.9},
    ]


class Webhooks(LoopbackServer):
    """Receives the predictions' webhooks; `terminal[id]` is each one's final status."""

    def __init__(self):
        self.terminal: dict[str, str] = {}
        outer = self

        class Handler(QuietHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if body.get("status") in ("succeeded", "failed", "canceled"):
                    outer.terminal[body["id"]] = body["status"]
                self.send_response(200)
                self.end_headers()

        super().__init__(Handler)


@dataclass
class StormReport:
    started: int = 0  # async predictions accepted (202)
    refused: dict[str, int] = field(default_factory=dict)  # HTTP status -> count, for the others
    cancels: int = 0
    terminal: dict[str, int] = field(default_factory=dict)  # final webhook status -> count
    missing_webhooks: list[str] = field(default_factory=list)  # accepted, no terminal webhook
    beside: list[str] = field(default_factory=list)  # the sync predictions' statuses during the storm
    settled: str = ""  # /health-check's status after the storm
    after: str = ""  # the status of a new prediction after the storm
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return (
            self.settled == "READY"
            and self.after == "succeeded"
            and not self.missing_webhooks
            and all(status == "succeeded" for status in self.beside)
        )


def storm(url: str, callers: int, cancels: int, seed: int = 0) -> StormReport:
    """The storm against the server at `url` (see the module's docstring); returns what it saw."""
    report, modes, hooks = StormReport(), mixed_modes(), Webhooks()
    accepted: list[str] = []
    lock, calm = threading.Lock(), threading.Event()
    start = time.monotonic()

    def caller(number: int) -> None:
        chooser = random.Random(seed * 1000 + number)
        for index in range(cancels):
            prediction_id = f"storm-{number}-{index}"
            body = {"id": prediction_id, "webhook": f"{hooks.url}/hook", "input": modes[(number + index) % len(modes)]}
            response = requests.post(
                f"{url}/predictions", json=body, headers={"Prefer": "respond-async"}, timeout=HTTP_TIMEOUT
            )
            with lock:
                if response.status_code != 202:
                    report.refused[str(response.status_code)] = report.refused.get(str(response.status_code), 0) + 1
                    continue
                report.started += 1
                accepted.append(prediction_id)
            time.sleep(chooser.uniform(0, LATEST_CANCEL))
            requests.post(f"{url}/predictions/{prediction_id}/cancel", timeout=HTTP_TIMEOUT)
            with lock:
                report.cancels += 1

    def beside() -> None:
        while not calm.is_set():
            try:
                answer = requests.post(
                    f"{url}/predictions", json={"input": {"prompt": "beside", "duration": 8}}, timeout=PREDICT_TIMEOUT
                )
            except requests.RequestException as error:  # a jammed server: no answer in time
                report.beside.append(type(error).__name__)
                return
            report.beside.append(answer.json().get("status", f"HTTP {answer.status_code}"))

    try:
        running = [threading.Thread(target=caller, args=(number,)) for number in range(callers)]
        steady = threading.Thread(target=beside)
        steady.start()
        for thread in running:
            thread.start()
        for thread in running:
            thread.join()
        calm.set()
        steady.join(PREDICT_TIMEOUT)
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < deadline and not set(accepted) <= set(hooks.terminal):
            time.sleep(0.2)
        report.missing_webhooks = sorted(set(accepted) - set(hooks.terminal))
        for status in hooks.terminal.values():
            report.terminal[status] = report.terminal.get(status, 0) + 1
        while time.monotonic() < deadline:
            report.settled = requests.get(f"{url}/health-check", timeout=HTTP_TIMEOUT).json().get("status", "")
            if report.settled == "READY":
                break
            time.sleep(0.2)
        answer = requests.post(
            f"{url}/predictions", json={"input": {"prompt": "after", "duration": 2, "seed": 1}}, timeout=PREDICT_TIMEOUT
        )
        report.after = answer.json().get("status", f"HTTP {answer.status_code}")
    finally:
        hooks.close()
    report.seconds = round(time.monotonic() - start, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=3)
    parser.add_argument("--cancels", type=int, default=100, help="cancels per caller")
    parser.add_argument("--batch", type=int, default=4, help="MUSICGEN_MAX_BATCH")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    from musicgen.demo.builders import write_demo_weights

    with tempfile.TemporaryDirectory(prefix="musicgen-storm-") as scratch:
        weights = Path(scratch) / "weights"
        write_demo_weights(weights)
        env = {"MUSICGEN_MAX_BATCH": str(args.batch), "OMP_NUM_THREADS": "1"}
        server = ServerProcess(weights, Path(scratch) / "server.log", env).ready(START_TIMEOUT)
        try:
            report = storm(server.url, args.callers, args.cancels, args.seed)
        finally:
            server.stop()
    print(json.dumps({**asdict(report), "passed": report.passed}, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**asdict(report), "passed": report.passed}, indent=2) + "\n")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
