"""End to end through the real Cog HTTP server: `python -m musicgen serve` on the demo weights.

One server for the session (it takes a while to load), on a free loopback port. Every wait is
bounded. Clients retry on 409: the runtime frees its slot slightly after answering.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile
from helpers import LOOPBACK, LoopbackServer, QuietFileHandler, write_scale

from musicgen.dev.schema import openapi
from musicgen.server import server_command, server_environment
from musicgen.weights.layout import REPOSITORY

HOST = LOOPBACK
START_TIMEOUT = 300  # s: imports torch and audiocraft, loads two demo models, on a shared 2-core CPU
PREDICT_TIMEOUT = 240  # s for one prediction on the demo weights
HTTP_TIMEOUT = 10  # s for a request that does not wait for a prediction
SAMPLE_RATE = 32000  # Hz, every MusicGen output
MELODY_SECONDS = 3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class Server:
    """A `python -m musicgen serve` process and its log."""

    def __init__(self, weights: Path, log_path: Path):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "musicgen", "serve", "--host", HOST, "--port", str(self.port)],
            cwd=REPOSITORY,
            env=dict(os.environ, MUSICGEN_WEIGHTS=str(weights)),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self, characters: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-characters:]

    def health(self) -> dict:
        return requests.get(f"{self.url}/health-check", timeout=HTTP_TIMEOUT).json()

    def wait_for(self, statuses: set[str], timeout: float) -> dict:
        """Poll /health-check until its status is one of `statuses`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                health = self.health()
                if health.get("status") in statuses:
                    return health
            except requests.ConnectionError:
                pass  # not listening yet
            time.sleep(0.5)
        pytest.fail(f"server not {statuses} after {timeout} s:\n{self.log_tail()}")

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

    def post(self, path: str, body: dict, headers: dict | None = None, timeout: float = PREDICT_TIMEOUT):
        """POST, retrying while the runtime answers 409 (its one slot not yet free)."""
        deadline = time.monotonic() + timeout
        while True:
            response = requests.post(f"{self.url}{path}", json=body, headers=headers, timeout=timeout)
            if response.status_code != 409 or time.monotonic() > deadline:
                return response
            time.sleep(0.2)

    def predict(self, **inputs) -> dict:
        """A synchronous prediction; returns the response body (any status)."""
        response = self.post("/predictions", {"input": inputs})
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="session")
def server(demo_weights, tmp_path_factory):
    server = Server(demo_weights, tmp_path_factory.mktemp("server") / "server.log")
    try:
        server.wait_for({"READY"}, START_TIMEOUT)
        yield server
    finally:
        server.stop()


class FileServer(LoopbackServer):
    """A loopback HTTP server for test files (input audio) that also records POSTed JSON (webhooks)."""

    def __init__(self, directory: Path):
        self.received: list[dict] = []
        self.arrived = threading.Condition()
        outer = self

        class Handler(QuietFileHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(directory), **kwargs)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.arrived:
                    outer.received.append(body)
                    outer.arrived.notify_all()
                self.send_response(200)
                self.end_headers()

        super().__init__(Handler)

    def wait_for_webhook(self, prediction_id: str, statuses: set[str], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                for body in self.received:
                    if body.get("id") == prediction_id and body.get("status") in statuses:
                        return body
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"no webhook with status {statuses} for {prediction_id}: {self.received}")
                self.arrived.wait(remaining)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A melody WAV (3 s, 44.1 kHz stereo: not the model's format) behind a local HTTP server."""
    directory = tmp_path_factory.mktemp("files")
    write_scale(directory / "melody.wav", MELODY_SECONDS, base=220.0, channel_gain_step=0.0)  # a rising scale
    server = FileServer(directory)
    yield server, directory
    server.close()


def data_uri(path: Path, mime: str = "audio/wav") -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def decode_output(prediction: dict) -> tuple[str, np.ndarray, int]:
    """The output data: URI of a succeeded prediction -> (mime type, samples [T, C], sample rate)."""
    assert prediction["status"] == "succeeded", prediction.get("error") or prediction.get("logs")
    header, _, payload = prediction["output"].partition(",")
    assert header.startswith("data:") and header.endswith(";base64"), header[:80]
    samples, rate = soundfile.read(io.BytesIO(base64.b64decode(payload)), always_2d=True)
    return header[5:].split(";")[0], samples, rate


def assert_audio(samples: np.ndarray, rate: int, seconds: float, tolerance: float = 0.1) -> None:
    assert rate == SAMPLE_RATE
    assert samples.shape[1] in (1, 2)
    assert math.isclose(samples.shape[0] / rate, seconds, abs_tol=tolerance), samples.shape[0] / rate
    assert np.isfinite(samples).all() and np.abs(samples).max() <= 1.0
    assert np.abs(samples).max() > 1e-3, "silent output"


# --------------------------------------------------------------------------------------------
# The launch, the schema and validation


def test_launch_is_the_containers():
    """The container's command and environment, with this interpreter first on PATH for the worker."""
    env = server_environment(5123, "predict.py:Predictor", base={"PATH": "/usr/bin", "KEEP": "1"})
    assert env["PATH"] == f"{Path(sys.executable).parent}{os.pathsep}/usr/bin"
    assert env["COG_PREDICT_TYPE_STUB"] == "predict.py:Predictor" and env["PORT"] == "5123" and env["KEEP"] == "1"
    assert server_command("127.0.0.1") == [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"]


def test_served_openapi_is_the_generated_schema(server):
    served = requests.get(f"{server.url}/openapi.json", timeout=HTTP_TIMEOUT).json()
    assert served == json.loads(openapi.generate())
    properties = served["components"]["schemas"]["Input"]
    assert "required" not in properties
    assert properties["properties"]["duration"]["maximum"] == 60
    assert served["components"]["schemas"]["Output"] == {"format": "uri", "title": "Output", "type": "string"}


@pytest.mark.parametrize(
    "inputs, field",
    [
        ({"duration": 61}, "duration"),  # above maximum
        ({"duration": "long"}, "duration"),  # wrong type
        ({"duration": 2.5}, "duration"),  # a float for an integer
        ({"top_p": "high"}, "top_p"),
        ({"continuation": "maybe"}, "continuation"),
        ({"model_version": "small"}, "model_version"),  # not in choices
        ({"output_format": "flac"}, "output_format"),
        ({"normalization_strategy": "none"}, "normalization_strategy"),
        ({"seed": None}, "seed"),  # explicit null: clients leave optional inputs out
    ],
)
def test_invalid_inputs_get_422(server, inputs, field):
    response = server.post("/predictions", {"input": {"prompt": "drums", **inputs}}, timeout=HTTP_TIMEOUT)
    assert response.status_code == 422, response.text
    details = response.json()["detail"]
    assert any(field in detail["loc"] for detail in details), details


# --------------------------------------------------------------------------------------------
# The modes


@pytest.mark.parametrize("model_version", ["melody", "large"])
def test_text_to_music(server, model_version):
    prediction = server.predict(model_version=model_version, prompt="calm piano", duration=2, seed=1)
    mime, samples, rate = decode_output(prediction)
    assert mime == "audio/wav"
    assert_audio(samples, rate, 2)


def test_melody_from_a_data_uri(server, files):
    _, directory = files
    prediction = server.predict(prompt="strings", input_audio=data_uri(directory / "melody.wav"), duration=2, seed=2)
    assert_audio(*decode_output(prediction)[1:], 2)


def test_melody_from_an_http_url(server, files):
    file_server, _ = files
    prediction = server.predict(prompt="strings", input_audio=f"{file_server.url}/melody.wav", duration=2, seed=2)
    assert_audio(*decode_output(prediction)[1:], 2)


def test_continuation_includes_the_prompt_window(server, files):
    _, directory = files
    prediction = server.predict(
        prompt="jazz",
        input_audio=data_uri(directory / "melody.wav"),
        continuation=True,
        continuation_start=1,
        continuation_end=2,
        duration=2,
        seed=3,
    )
    assert_audio(*decode_output(prediction)[1:], 1 + 2)  # the 1 s window, then 2 s of new audio


def test_encode_decode_keeps_the_length(server, files):
    _, directory = files
    prediction = server.predict(model_version="encode-decode", input_audio=data_uri(directory / "melody.wav"))
    assert_audio(*decode_output(prediction)[1:], MELODY_SECONDS)


def test_mp3_output(server):
    prediction = server.predict(prompt="rock", duration=2, output_format="mp3", seed=4)
    mime, samples, rate = decode_output(prediction)
    assert mime == "audio/mpeg"
    assert_audio(samples, rate, 2, tolerance=0.15)  # MP3 frames pad the ends


# --------------------------------------------------------------------------------------------
# Errors, asynchronous predictions, cancel, bursts


def test_semantic_error_fails_the_prediction_and_the_server_stays_ready(server, files):
    _, directory = files
    prediction = server.predict(
        prompt="jazz",
        input_audio=data_uri(directory / "melody.wav"),
        continuation=True,
        continuation_start=2,
        continuation_end=1,
    )
    assert prediction["status"] == "failed"
    assert "continuation_end=1 must be greater than continuation_start=2" in prediction["error"]
    assert "Traceback" not in prediction["error"]
    assert server.wait_for({"READY"}, HTTP_TIMEOUT)["status"] == "READY"


def test_async_prediction_delivers_its_result_to_the_webhook(server, files):
    file_server, _ = files
    response = server.post(
        "/predictions",
        {"input": {"prompt": "ambient", "duration": 1, "seed": 5}, "webhook": f"{file_server.url}/webhook"},
        headers={"Prefer": "respond-async"},
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 202, response.text
    prediction_id = response.json()["id"]
    final = file_server.wait_for_webhook(prediction_id, {"succeeded", "failed", "canceled"}, PREDICT_TIMEOUT)
    assert_audio(*decode_output(final)[1:], 1)


def test_cancel_a_running_prediction(server, files):
    file_server, _ = files
    response = server.post(
        "/predictions",
        {
            "id": "to-cancel",
            "webhook": f"{file_server.url}/webhook",
            "input": {"model_version": "large", "prompt": "long", "duration": 60},
        },
        headers={"Prefer": "respond-async"},
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 202, response.text
    server.wait_for({"BUSY"}, HTTP_TIMEOUT)
    cancel = requests.post(f"{server.url}/predictions/to-cancel/cancel", timeout=HTTP_TIMEOUT)
    assert cancel.status_code == 200, cancel.text
    final = file_server.wait_for_webhook("to-cancel", {"succeeded", "failed", "canceled"}, PREDICT_TIMEOUT)
    assert final["status"] == "canceled"
    server.wait_for({"READY"}, PREDICT_TIMEOUT)
    assert_audio(*decode_output(server.predict(prompt="after cancel", duration=1, seed=6))[1:], 1)


def test_burst_of_sequential_requests(server):
    """Back-to-back clients all get through (retrying on 409), and a seed reproduces its audio."""
    outputs = [server.predict(prompt="burst", duration=1, seed=7 + index % 2) for index in range(6)]
    assert all(output["status"] == "succeeded" for output in outputs), [o.get("error") for o in outputs]
    assert outputs[0]["output"] == outputs[2]["output"] == outputs[4]["output"]
    assert outputs[0]["output"] != outputs[1]["output"]


# --------------------------------------------------------------------------------------------
# Setup failure


def test_missing_weights_are_reported_by_the_health_check(tmp_path):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    server = Server(empty, tmp_path / "server.log")
    try:
        health = server.wait_for({"SETUP_FAILED", "READY"}, START_TIMEOUT)
        assert health["status"] == "SETUP_FAILED"
        logs = health["setup"]["logs"]
        assert "WeightsError" in logs and str(empty) in logs and "demo-weights" in logs, logs
        assert "Traceback" not in logs, logs
        response = requests.post(f"{server.url}/predictions", json={"input": {}}, timeout=HTTP_TIMEOUT)
        assert response.status_code == 503
    finally:
        server.stop()
