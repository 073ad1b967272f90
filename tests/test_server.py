"""End to end through the real Cog HTTP server: `python -m musicgen serve` on the demo weights.

One server for the session (conftest's `server`: it takes a while to load), on a free loopback
port. Every wait is bounded. Hostile and careless callers are in test_server_callers.py.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from helpers import (
    HTTP_TIMEOUT,
    PREDICT_TIMEOUT,
    START_TIMEOUT,
    FileServer,
    Server,
    data_uri,
    decode_output,
    write_scale,
)

from musicgen.serving.launch import server_command, server_environment
from tooling.schema import openapi
from tooling.server_process import free_port

pytestmark = pytest.mark.slow  # the real server, started once per session

SAMPLE_RATE = 32000  # Hz, every MusicGen output
MELODY_SECONDS = 3


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A melody WAV (3 s, 44.1 kHz stereo: not the model's format) behind a local HTTP server."""
    directory = tmp_path_factory.mktemp("files")
    write_scale(directory / "melody.wav", MELODY_SECONDS, base=220.0, channel_gain_step=0.0)  # a rising scale
    server = FileServer(directory)
    yield server, directory
    server.close()


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


def test_serving_writes_nothing_into_the_checkout(server):
    """`serve` runs on the committed .cog/openapi_schema.json (tests/test_schema_generator.py keeps
    it current) and writes no file of the checkout: it can start from a read-only image."""
    assert server.checkout_changes == set()
    assert openapi.SCHEMA_FILE.read_text() == openapi.generate()


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
        ({"model_version": "xl"}, "model_version"),  # not in choices
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


def test_the_family_and_a_negative_prompt_over_http(server, demo_weights):
    """small (loaded on its first request) answers; a negative prompt changes the file, and the
    same request gives the same bytes again. The load is in the caller's logs without server paths."""
    inputs = {"model_version": "small", "prompt": "calm piano", "duration": 1, "seed": 3}
    plain = server.predict(**inputs)
    assert "loaded small on cpu in " in plain["logs"], plain["logs"]
    assert str(demo_weights) not in plain["logs"] and "/tmp" not in plain["logs"], plain["logs"]
    negative = server.predict(**inputs, negative_prompt="drums")
    _, samples, rate = decode_output(negative)
    assert_audio(samples, rate, 1)
    assert negative["output"] != plain["output"]
    assert server.predict(**inputs, negative_prompt="drums")["output"] == negative["output"]


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
    file_server.wait_for_webhook("to-cancel", {"processing"}, PREDICT_TIMEOUT, logs="generating: ")  # mid-way
    cancel = requests.post(f"{server.url}/predictions/to-cancel/cancel", timeout=HTTP_TIMEOUT)
    assert cancel.status_code == 200, cancel.text
    final = file_server.wait_for_webhook("to-cancel", {"succeeded", "failed", "canceled"}, PREDICT_TIMEOUT)
    assert final["status"] == "canceled"
    server.wait_for({"READY"}, PREDICT_TIMEOUT)
    assert_audio(*decode_output(server.predict(prompt="after cancel", duration=1, seed=6))[1:], 1)


def test_burst_of_sequential_requests(server):
    """Back-to-back requests all get through (no retry on 409), and a seed reproduces its audio."""
    outputs = [server.predict(prompt="burst", duration=1, seed=7 + index % 2) for index in range(6)]
    assert all(output["status"] == "succeeded" for output in outputs), [o.get("error") for o in outputs]
    assert outputs[0]["output"] == outputs[2]["output"] == outputs[4]["output"]
    assert outputs[0]["output"] != outputs[1]["output"]


# --------------------------------------------------------------------------------------------
# Setup failure


def test_missing_weights_are_reported_by_the_health_check(tmp_path):
    """Setup fails (no weights): /health-check says SETUP_FAILED (with a 200, the runtime's way);
    the worker's own probes (docs/operations.md, "Probes") answer 503 naming the error."""
    empty = tmp_path / "no-weights"
    empty.mkdir()
    probes = free_port()
    server = Server(empty, tmp_path / "server.log", {"MUSICGEN_METRICS_PORT": str(probes)})
    try:
        health = server.wait_for({"SETUP_FAILED", "READY"}, START_TIMEOUT)
        assert health["status"] == "SETUP_FAILED"
        logs = health["setup"]["logs"]
        assert "WeightsError" in logs and str(empty) in logs and "demo-weights" in logs, logs
        assert "Traceback" not in logs, logs
        response = requests.post(f"{server.url}/predictions", json={"input": {}}, timeout=HTTP_TIMEOUT)
        assert response.status_code == 503
        assert requests.get(f"{server.url}/health-check", timeout=HTTP_TIMEOUT).status_code == 200
        for path in ("/livez", "/readyz"):
            try:
                answer = requests.get(f"http://127.0.0.1:{probes}{path}", timeout=HTTP_TIMEOUT)
            except requests.ConnectionError:
                continue  # the worker is gone: refused, a failure too
            assert answer.status_code == 503 and answer.json()["reason"].startswith("setup failed: WeightsError")
    finally:
        server.stop()
