"""The streaming model (streaming/predict.py): the audio in chunks as it is decoded, then the whole piece.

In process: each chunk is a complete file of new audio (1.5 s first), the chunks together are the
piece (each within 20 dB of its span of the final file, after one gain), the last item is the
published model's file, byte for byte, in every mode. Through the real Cog server with
`Accept: text/event-stream`: chunks arrive as `output` events, a cancel or a client gone stops it
and frees the server, a neighbour in the batch keeps its bytes; the listening page plays it in
headless Chromium. The schemas: the same inputs as predict.py, marked for streaming.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile
from helpers import HTTP_TIMEOUT, PREDICT_TIMEOUT, START_TIMEOUT, Server, data_uri, write_scale

from musicgen.cli import write_stream
from musicgen.request import Request
from musicgen.serving.cog_yaml import COG_YAML, STREAMING_DIR
from tooling.bench.stream import agreement
from tooling.schema import openapi

RATE = 32000
FIRST_CHUNK = int(1.5 * RATE)  # samples: the first chunk comes early


def stream(service, **inputs) -> tuple[list[np.ndarray], Path]:
    """A streaming prediction in process: its chunks (samples [T, C], in order) and its file."""
    chunks: list[np.ndarray] = []
    final = service.predict(
        Request(**inputs), on_chunk=lambda path: chunks.append(soundfile.read(path, always_2d=True)[0])
    )
    return chunks, final.path


@pytest.fixture(scope="module")
def melody(tmp_path_factory) -> Path:
    return write_scale(tmp_path_factory.mktemp("stream-files") / "melody.wav", 4, channel_gain_step=0.0)


@pytest.mark.parametrize(
    "inputs",
    [
        {"prompt": "calm", "duration": 12, "seed": 1},
        {"model_version": "large", "prompt": "long", "duration": 34, "seed": 2, "top_p": 0.9},  # two windows
        {"model_version": "stereo-large", "prompt": "wide", "duration": 6, "seed": 3, "negative_prompt": "drums"},
        {"prompt": "strings", "duration": 5, "seed": 4, "input_audio": "melody"},
        {"model_version": "large", "prompt": "on", "duration": 4, "seed": 5, "input_audio": "melody", "continuation": True},
    ],
    ids=["text 12 s", "34 s, two windows", "stereo", "melody", "continuation"],
)  # fmt: skip
def test_the_chunks_are_the_piece_as_it_is_made_and_the_last_item_is_the_published_file(predictor, melody, inputs):
    service = predictor.runner.service
    inputs = {**inputs, "input_audio": melody} if inputs.get("input_audio") else inputs
    published = service.predict(Request(**inputs)).path.read_bytes()
    chunks, final = stream(service, **inputs)
    assert final.read_bytes() == published  # byte for byte, the file predict.py returns
    whole = soundfile.read(final, always_2d=True)[0]
    assert len(chunks) >= 2 and len(chunks[0]) == FIRST_CHUNK  # a continuation's prompt window comes first too
    assert sum(len(chunk) for chunk in chunks) == len(whole)  # only new audio in each, nothing missing
    assert all(chunk.shape[1] == whole.shape[1] for chunk in chunks)
    assert min(agreement(chunks, whole)) >= 20, agreement(chunks, whole)  # the same spans, up to one gain
    if inputs["duration"] == 12:
        assert len(chunks) == 4  # 1.5 s, 3 s, 3 s, then the last 4.5 s


def test_multi_band_diffusion_streams_encodec_previews_then_its_own_piece(predictor):
    service = predictor.runner.service
    inputs = {"prompt": "calm", "duration": 4, "seed": 6, "multi_band_diffusion": True}
    published = service.predict(Request(**inputs)).path.read_bytes()
    chunks, final = stream(service, **inputs)
    assert final.read_bytes() == published and len(chunks) >= 2
    assert sum(len(chunk) for chunk in chunks) == len(soundfile.read(final, always_2d=True)[0])


def test_encode_decode_has_no_tokens_to_stream_its_stream_is_the_file(predictor, melody):
    chunks, final = stream(predictor.runner.service, model_version="encode-decode", input_audio=melody)
    assert chunks == [] and final.is_file()


def test_the_command_line_writes_each_part_as_it_comes_then_the_whole_piece(tmp_path, capsys):
    """predict --stream: out.part001.wav, ... as the items come, one line each; the last is -o."""
    items = tmp_path / "items"
    items.mkdir()
    for index, seconds in enumerate((1.5, 3.0, 4.5)):
        soundfile.write(items / f"musicgen-melody-1-part{index + 1:03d}.wav", np.zeros(int(seconds * RATE)), RATE)

    output = write_stream(iter(sorted(items.iterdir())), str(tmp_path / "out" / "piece.wav"))
    assert output == tmp_path / "out" / "piece.wav" and soundfile.info(str(output)).duration == 4.5
    assert sorted(path.name for path in output.parent.iterdir()) == [
        "piece.part001.wav",
        "piece.part002.wav",
        "piece.wav",
    ]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in lines] == ["part 1: piece.part001.wav", "part 2: piece.part002.wav",
                                                      "part 3: piece.part003.wav"]  # fmt: skip
    assert "1.50 s of audio" in lines[0]


# --------------------------------------------------------------------------------------------
# The schemas


def test_a_cancel_of_a_finished_published_prediction_is_not_taken_for_a_stream():
    """The runtime patch (observe_stream_cancels) hands every finished future's result to
    cancel_stream: a published predict()'s Path, None or text is no stream and is answered False,
    not with a TypeError (a weak dict cannot hold them)."""
    from musicgen.serving.workers import cancel_stream

    for result in (Path("/tmp/out.wav"), None, "text", 3, iter([]), (item for item in ())):
        assert cancel_stream(result) is False, result


def test_the_streaming_model_takes_exactly_the_published_inputs_and_is_marked_for_streaming():
    published = json.loads(openapi.SCHEMA_FILE.read_text())
    streaming = json.loads((STREAMING_DIR / ".cog" / "openapi_schema.json").read_text())
    for name, schema in published["components"]["schemas"].items():
        if name in ("Input", "model_version", "normalization_strategy", "output_format"):
            assert streaming["components"]["schemas"][name] == schema, name
    assert streaming["components"]["schemas"]["Output"] == {
        "title": "Output", "type": "array", "items": {"type": "string", "format": "uri"}, "x-cog-array-type": "iterator"
    }  # fmt: skip
    assert streaming["paths"]["/predictions"]["post"]["x-cog-streaming"] is True
    assert "x-cog-streaming" not in published["paths"]["/predictions"]["post"]
    assert published["components"]["schemas"]["Output"] == {"title": "Output", "type": "string", "format": "uri"}
    assert not openapi.stale(), "run `python -m tooling.schema.openapi`"


def test_the_streaming_image_is_built_as_the_published_one():
    import yaml

    published, streaming = (yaml.safe_load(path.read_text()) for path in (COG_YAML, STREAMING_DIR / "cog.yaml"))
    assert streaming["build"] == published["build"]
    assert streaming["predict"] == "streaming/predict.py:Predictor" and "train" not in streaming


# --------------------------------------------------------------------------------------------
# Through the real Cog server: the streaming model and the published one, N = 4


@pytest.fixture(scope="module")
def servers(demo_weights, tmp_path_factory):
    """The streaming server and the published one, both with MUSICGEN_MAX_BATCH=4 (started together)."""
    env = {"MUSICGEN_MAX_BATCH": "4"}
    started = []
    try:
        for name, args in (("streaming", ("--stream",)), ("published", ())):
            folder = tmp_path_factory.mktemp(f"{name}-server")
            (folder / "tmp").mkdir()
            server = Server(demo_weights, folder / "server.log", {"TMPDIR": str(folder / "tmp"), **env}, args=args)
            server.tmp = folder / "tmp"
            started.append(server)
        for server in started:
            server.ready(START_TIMEOUT)
        yield started
    finally:
        for server in started:
            server.stop()


def events(response: requests.Response):
    """The server-sent events of a streaming response, as (event, data) pairs, as they arrive."""
    kind, data = "message", []
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield kind, json.loads("\n".join(data))
            kind, data = "message", []


def open_stream(server: Server, inputs: dict, **body) -> requests.Response:
    response = requests.post(
        f"{server.url}/predictions",
        json={"input": inputs, **body},
        headers={"Accept": "text/event-stream"},
        stream=True,
        timeout=PREDICT_TIMEOUT,
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    return response


def samples(uri: str) -> np.ndarray:
    return soundfile.read(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), always_2d=True)[0]


def test_a_piece_streams_as_server_sent_events_and_ends_with_the_published_bytes(servers):
    streaming, published = servers
    inputs = {"prompt": "calm piano", "duration": 20, "seed": 8}
    outputs, arrivals, start = [], [], time.monotonic()
    for kind, data in events(open_stream(streaming, inputs)):
        if kind == "output":
            outputs.append(data["chunk"])
            arrivals.append(time.monotonic() - start)
        elif kind == "completed":
            completed = data
    assert completed["status"] == "succeeded" and completed["output"] == outputs
    assert len(outputs) >= 6  # at least 5 chunks, then the piece
    assert outputs[-1] == published.predict(**inputs)["output"]
    chunks = [samples(uri) for uri in outputs[:-1]]
    assert sum(len(chunk) for chunk in chunks) == 20 * RATE
    assert arrivals[0] < arrivals[-1]  # the first came before the end


def test_a_melody_and_an_mp3_request_stream(servers, melody):
    streaming, published = servers
    for inputs in (
        {"prompt": "strings", "input_audio": data_uri(melody), "duration": 6, "seed": 9},
        {"model_version": "large", "prompt": "calm", "duration": 6, "seed": 10, "output_format": "mp3"},
    ):
        outputs = [data["chunk"] for kind, data in events(open_stream(streaming, inputs)) if kind == "output"]
        assert len(outputs) >= 3 and outputs[-1] == published.predict(**inputs)["output"]
        mime = "audio/mpeg" if inputs.get("output_format") == "mp3" else "audio/wav"
        assert all(uri.startswith(f"data:{mime};base64,") for uri in outputs)
        assert all(len(samples(uri)) > 0 for uri in outputs)  # each a complete, playable file


def _leftovers(server: Server) -> list[Path]:
    return [path for path in server.tmp.rglob("*") if path.is_file()]


def test_a_cancel_ends_the_stream_at_once_and_frees_the_server(servers):
    streaming, _ = servers
    response = open_stream(streaming, {"prompt": "long", "duration": 60, "seed": 11}, id="stream-to-cancel")
    seen = 0
    for kind, data in events(response):
        if kind == "output" and not seen:
            seen = 1
            cancelled_at = time.monotonic()
            answer = requests.post(f"{streaming.url}/predictions/stream-to-cancel/cancel", timeout=HTTP_TIMEOUT)
            assert answer.status_code == 200, answer.text
        elif kind == "completed":
            assert data["status"] == "canceled", data
            break
    assert seen and time.monotonic() - cancelled_at < 10
    streaming.wait_for({"READY"}, HTTP_TIMEOUT)
    deadline = time.monotonic() + 10  # the cancelled prediction's folder goes with its chunks
    while [path for path in _leftovers(streaming) if "-11-part" in path.name]:
        assert time.monotonic() < deadline, _leftovers(streaming)
        time.sleep(0.2)


def test_a_client_closing_the_stream_stops_its_prediction(servers):
    streaming, _ = servers
    response = open_stream(streaming, {"prompt": "long", "duration": 60, "seed": 12}, id="stream-to-close")
    for kind, _ in events(response):
        if kind == "output":
            break
    response.close()  # the client goes away after the first chunk
    deadline = time.monotonic() + 15
    while '"Prediction cancelled","prediction_id":"stream-to-close"' not in streaming.log_text():
        assert time.monotonic() < deadline, streaming.log_tail()
        time.sleep(0.2)
    streaming.wait_for({"READY"}, 30)
    assert streaming.predict(prompt="after", duration=1, seed=1)["status"] == "succeeded"
    assert not [path for path in _leftovers(streaming) if "-12-part" in path.name]


def test_a_streaming_request_beside_three_others_changes_none_of_their_bytes(servers):
    """N = 4, on the streaming server: three requests answered as JSON and one streaming request
    decode together. Each of the three ends with the bytes the published server gives it alone,
    and so does the stream."""
    streaming, published = servers
    crowd = [
        {"prompt": "jazz", "duration": 8, "seed": 21, "top_k": 50},
        {"model_version": "large", "prompt": "rock", "duration": 10, "seed": 22, "temperature": 0.8},
        {"prompt": "ambient", "duration": 6, "seed": 23, "classifier_free_guidance": 0},
    ]
    beside = {"prompt": "streamed", "duration": 12, "seed": 24}
    alone = [published.predict(**inputs)["output"] for inputs in [*crowd, beside]]
    answers: dict[int, list] = {}

    def send(index: int, inputs: dict) -> None:
        answer = requests.post(f"{streaming.url}/predictions", json={"input": inputs}, timeout=PREDICT_TIMEOUT).json()
        answers[index] = answer.get("output") or [answer]

    threads = [threading.Thread(target=send, args=(index, inputs)) for index, inputs in enumerate(crowd)]
    for thread in threads:
        thread.start()
    outputs = [data["chunk"] for kind, data in events(open_stream(streaming, beside)) if kind == "output"]
    for thread in threads:
        thread.join(PREDICT_TIMEOUT)
    assert [answers[index][-1] for index in range(3)] == alone[:3]  # the last item: the whole piece
    assert outputs[-1] == alone[3]
    assert "its steps shared with up to" in streaming.log_text().split("seed 24", 1)[1]


def test_the_listening_page_plays_the_chunks_as_they_come_in_headless_chromium(servers, tmp_path):
    """deploy/nginx/ serves the page at /listen/ beside the streaming server; in Debian's Chromium
    (headless, through the DevTools protocol) Generate plays the first chunk before the last one
    arrives, end to end, and ends offering the whole piece. The screenshot is written beside."""
    from helpers import start_proxy

    from tooling.browser import HeadlessChromium

    streaming, _ = servers
    folder = Path(tempfile.mkdtemp(prefix="musicgen-listen-"))  # nginx's workers (not root) read the page
    folder.chmod(0o755)
    url, proxy = start_proxy(streaming.url, "predictions", folder)
    try:
        with HeadlessChromium() as browser:
            browser.open(f"{url}/listen/")
            browser.evaluate(
                "document.querySelector('[name=prompt]').value = 'calm piano';"
                "document.querySelector('[name=duration]').value = '8';"
                "document.querySelector('[name=seed]').value = '31';"
                "document.getElementById('generate').click()"
            )
            state = browser.wait_for("window.listenState.done && window.listenState", timeout=PREDICT_TIMEOUT)
            browser.screenshot(tmp_path / "listen.png")
            link = browser.evaluate("document.querySelector('#download a').href")
    finally:
        proxy.terminate()
        proxy.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    assert state["error"] is None, state
    assert state["chunks"] == 4 and state["played"]  # 1.5 s, 3 s, 3 s, 0.5 s
    assert state["playingWhenLastChunkArrived"] is True  # playback began before the last chunk came
    assert abs(state["final"]["seconds"] - 8) < 0.01
    assert link == streaming.predict(prompt="calm piano", duration=8, seed=31)["output"][-1]
    assert (tmp_path / "listen.png").stat().st_size > 10_000
