"""Helpers shared by the test modules (pytest puts this folder on sys.path).

The Predictor with Cog's defaults, the command line, test audio, a failing ffmpeg, a loopback
HTTP server and the published schemas in tests/data/published-schemas/.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import io
import json
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile

from musicgen.settings import REPOSITORY
from musicgen.versions import MODEL_VERSIONS, PUBLISHED
from tooling.loopback import LoopbackServer as LoopbackServer  # re-exported for the tests
from tooling.loopback import QuietFileHandler, QuietHandler
from tooling.server_process import HTTP_TIMEOUT as HTTP_TIMEOUT  # re-exported for the tests
from tooling.server_process import ServerError, ServerProcess, free_port
from tooling.signals import scale

# ---------------------------------------------------------------------------------------------
# The Predictor and the command line


def predict_with_defaults(predictor, **inputs) -> Path:
    """predictor.predict() with every input not given at its declared default, as Cog fills them in."""
    parameters = inspect.signature(predictor.predict).parameters
    values = {name: parameter.default.default for name, parameter in parameters.items()}
    return Path(asyncio.run(predictor.predict(**{**values, **inputs})))


def run_cli(*args: str, cwd: Path, weights: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m musicgen *args` in `cwd` on the weights root `weights`, one torch thread, output captured."""
    env = {**os.environ, "MUSICGEN_WEIGHTS": str(weights)}  # one thread, the checkout importable: conftest.py
    return subprocess.run(
        [sys.executable, "-m", "musicgen", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


# ---------------------------------------------------------------------------------------------
# Test audio

# One sine per channel, so a swapped or dropped channel shows. Channel 3 is LFE in 5.1: AAC keeps
# only its lowest few dozen Hz, hence 40 Hz there.
FREQUENCIES = (440, 550, 660, 40, 770, 880)  # Hz


def sines(seconds: float, rate: int, channels: int = 1, amplitude: float = 0.3) -> np.ndarray:
    """[T, C] float64, channel k a sine at FREQUENCIES[k]."""
    t = np.arange(round(rate * seconds)) / rate
    return np.stack([amplitude * np.sin(2 * np.pi * FREQUENCIES[k] * t) for k in range(channels)], axis=1)


def header_declaring(tmp_path: Path, seconds_declared: float, rate: int, channels: int, seconds_held: float) -> Path:
    """A FLAC file whose STREAMINFO states `seconds_declared` but which holds `seconds_held` (a cut
    upload, or a lie): what the bound reads from the headers before decoding."""
    path = tmp_path / "declared.flac"
    soundfile.write(path, np.tile(sines(seconds_held, rate), (1, channels)), rate, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first
    fields = int.from_bytes(data[18:26], "big")  # rate (20 bits), channels (3), bits (5), total samples (36)
    fields = (fields & ~((1 << 36) - 1)) | int(seconds_declared * rate)
    data[18:26] = fields.to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return path


def write_scale(
    path: Path,
    seconds: float,
    rate: int = 44100,
    channels: int = 2,
    rising: bool = True,
    base: float = 330.0,
    channel_gain_step: float = 0.1,
) -> Path:
    """A 16-bit WAV of a scale of sines from `base` Hz (two notes per second), the same in every
    channel but channel c at gain 1 - c * channel_gain_step (0: identical channels)."""
    tone = scale(seconds, rate, base, rising)
    samples = np.stack([tone * (1 - channel_gain_step * c) for c in range(channels)], axis=1)
    soundfile.write(path, samples, rate, subtype="PCM_16")
    return path


def zero_bit_wav() -> bytes:
    """A WAV whose header says 0 bits per sample: ffmpeg finds the stream but no decoder for it."""
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 0, 0, 0)  # PCM, mono, 16 kHz, 0 bytes/s, 0 block, 0 bits
    data = bytes(1000)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + (struct.pack("<I", len(data)) + data)
    )


def ffmpeg(*args: str) -> None:
    """Run the real ffmpeg quietly, overwriting outputs; raise if it fails."""
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def failing_ffmpeg(tmp_path: Path, monkeypatch) -> None:
    """Put an `ffmpeg` first on PATH that leaves a partial output file (as a crash would) and fails
    like an encoder error."""
    script = tmp_path / "bin" / "ffmpeg"
    script.parent.mkdir()
    script.write_text(
        '#!/bin/sh\ncat > /dev/null\necho partial > "$(eval echo \\${$#})"\n'
        "echo 'Error initializing output stream 0:0 -- encoder libmp3lame failed' >&2\nexit 1\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")


# ---------------------------------------------------------------------------------------------
# A loopback HTTP server


class HostileSenders(LoopbackServer):
    """The hosts a careless or hostile caller points input_audio at, on loopback. GET:

    /file: `file` (bytes) whole, with its length; /missing: 404; /slow: declares 192 KB and trickles
    10 bytes a second; /endless: random bytes without end; /hang: headers (1000 bytes declared),
    then silence until the client goes away; /mute: no answer at all (not even headers) until the
    client goes away; /huge: declares 10 GB. `sent` counts each path's body
    bytes, `started` is set when a body begins, `closed[path]` notes when the client went away
    (wait_closed() waits for it).
    """

    SLOW_BYTES = 192_000  # /slow's declared length
    TRICKLE = 10  # /slow's bytes a second

    def __init__(self, file: bytes = b"a" * 1000):
        self.sent: dict[str, int] = {}
        self.closed: dict[str, float] = {}
        self.started = threading.Event()
        self.changed = threading.Condition()
        outer = self

        class Handler(QuietHandler):
            def do_GET(self):
                outer.sent[self.path] = 0
                try:
                    self._send()
                except (BrokenPipeError, ConnectionResetError):
                    outer.went_away(self.path)

            def _send(self):
                if self.path == "/missing":
                    self.send_error(404)
                    return
                if self.path == "/mute":  # the request read, nothing answered
                    outer.started.set()
                    self._wait_for_the_client()
                    return
                length = {"/file": len(file), "/slow": outer.SLOW_BYTES, "/hang": 1000, "/huge": 10**10}
                self._headers(length.get(self.path))
                outer.started.set()
                if self.path in ("/file", "/huge"):
                    self.wfile.write(file if self.path == "/file" else b"RIFF")
                elif self.path == "/hang":  # nothing more: wait until the client goes away
                    self._wait_for_the_client()
                elif self.path in ("/slow", "/endless"):
                    block = b"\0" * outer.TRICKLE if self.path == "/slow" else np.random.bytes(1 << 16)
                    while True:
                        self.wfile.write(block)
                        self.wfile.flush()
                        outer.sent[self.path] += len(block)
                        if self.path == "/slow":
                            time.sleep(1)

            def _wait_for_the_client(self):
                while not select.select([self.connection], [], [], 0.05)[0]:
                    pass
                if self.connection.recv(1) == b"":
                    outer.went_away(self.path)

            def _headers(self, length: int | None):
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                if length is not None:
                    self.send_header("Content-Length", str(length))
                self.end_headers()

        super().__init__(Handler)

    def went_away(self, path: str) -> None:
        with self.changed:
            self.closed[path] = time.monotonic()
            self.changed.notify_all()

    def wait_closed(self, path: str, timeout: float) -> bool:
        """Whether the client of `path` went away within `timeout` seconds (waits on the event)."""
        with self.changed:
            return self.changed.wait_for(lambda: path in self.closed, timeout)


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

    def wait_for_webhook(self, prediction_id: str, statuses: set[str], timeout: float, logs: str = "") -> dict:
        """The first webhook body for `prediction_id` with a status in `statuses` and `logs` in its logs."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                for body in self.received:
                    if body.get("id") == prediction_id and body.get("status") in statuses and logs in body["logs"]:
                        return body
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"no webhook with status {statuses} for {prediction_id}: {self.received}")
                self.arrived.wait(remaining)


# ---------------------------------------------------------------------------------------------
# The real Cog server

START_TIMEOUT = 300  # s: imports torch and audiocraft, loads two demo models, on a shared 2-core CPU
PREDICT_TIMEOUT = 240  # s for one prediction on the demo weights


class Server(ServerProcess):
    """`python -m musicgen serve [args]` for a test (tooling.server_process): a server that
    exits or does not get ready fails the test with its log; requests never retry on 409 (a client
    that waits for each answer never gets one; the tests check that)."""

    def wait_for(self, statuses: set[str], timeout: float) -> dict:
        try:
            return super().wait_for(statuses, timeout)
        except ServerError as error:
            pytest.fail(str(error))

    def post(self, path: str, body: dict, headers: dict | None = None, timeout: float = PREDICT_TIMEOUT):
        """One POST, answered as it is."""
        return requests.post(f"{self.url}{path}", json=body, headers=headers, timeout=timeout)

    def predict(self, **inputs) -> dict:
        """A synchronous prediction; returns the response body (any status)."""
        response = self.post("/predictions", {"input": inputs})
        assert response.status_code == 200, response.text
        return response.json()


def started_server(
    weights: Path, folder: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> Server:
    """`python -m musicgen serve [args]` on `weights`, READY, its log in `folder` and its TMPDIR
    `folder/tmp` (empty at start; `server.tmp`), so what the worker leaves behind can be inspected."""
    (folder / "tmp").mkdir()
    server = Server(weights, folder / "server.log", {"TMPDIR": str(folder / "tmp"), **(env or {})}, args=args)
    server.tmp = folder / "tmp"
    return server.ready(START_TIMEOUT)


def cancel_while_downloading(
    server: Server, endpoint: str, job_id: str, inputs: dict, senders: HostileSenders, hooks_dir: Path
) -> tuple[dict, float]:
    """POST `inputs` to `endpoint` ("predictions" or "trainings") asynchronously as `job_id`, cancel
    it once `senders` has begun the download, and return its final webhook and the seconds from the
    cancel to that webhook."""
    hooks = FileServer(hooks_dir)
    try:
        body = {"id": job_id, "webhook": f"{hooks.url}/hook", "input": inputs}
        response = server.post(f"/{endpoint}", body, headers={"Prefer": "respond-async"}, timeout=HTTP_TIMEOUT)
        assert response.status_code == 202, response.text
        assert senders.started.wait(HTTP_TIMEOUT), "the download never started"
        cancelled_at = time.monotonic()
        cancel = requests.post(f"{server.url}/{endpoint}/{job_id}/cancel", timeout=HTTP_TIMEOUT)
        assert cancel.status_code == 200, cancel.text
        final = hooks.wait_for_webhook(job_id, {"succeeded", "failed", "canceled"}, HTTP_TIMEOUT)
        return final, time.monotonic() - cancelled_at
    finally:
        hooks.close()


# ---------------------------------------------------------------------------------------------
# deploy/nginx/ in front of a server

NGINX_CONFIG = REPOSITORY / "deploy" / "nginx"


def start_proxy(upstream: str, serves: str, folder) -> tuple[str, subprocess.Popen]:
    """nginx with deploy/nginx/nginx.conf filled in for the server at `upstream` (serving
    `serves`: predictions or trainings), on a free port: (its URL, its process)."""
    shutil.copy(NGINX_CONFIG / "prediction_ids.js", folder)
    shutil.copytree(NGINX_CONFIG / "listen", folder / "listen")
    listen = f"127.0.0.1:{free_port()}"
    values = {
        "${COG_UPSTREAM}": upstream.removeprefix("http://"),
        "${PROXY_LISTEN}": listen,
        "${PROXY_DIR}": str(folder),
        "${COG_SERVES}": serves,
    }
    text = (NGINX_CONFIG / "nginx.conf").read_text()
    for name, value in values.items():
        text = text.replace(name, value)
    (folder / "nginx.conf").write_text(text)
    with open(folder / "nginx.log", "w") as log:
        process = subprocess.Popen(["nginx", "-p", str(folder), "-c", str(folder / "nginx.conf")], stderr=log)
    url = f"http://{listen}"
    proxy_passing(url, process, folder / "nginx.log")
    return url, process


def proxy_passing(url: str, process: subprocess.Popen, log: Path) -> None:
    """Wait (30 s at most) until the nginx `process` at `url` passes /health-check with a 200; if it
    exits or does not, kill it and fail the test with its `log`."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{url}/health-check", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(log.read_text())
        time.sleep(0.1)


def data_uri(path: Path, mime: str = "audio/wav") -> str:
    """A file as a data: URI, the way an HTTP caller sends it inline."""
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def decode_output(prediction: dict) -> tuple[str, np.ndarray, int]:
    """The output data: URI of a succeeded prediction -> (mime type, samples [T, C], sample rate)."""
    assert prediction["status"] == "succeeded", prediction.get("error") or prediction.get("logs")
    header, _, payload = prediction["output"].partition(",")
    assert header.startswith("data:") and header.endswith(";base64"), header[:80]
    samples, rate = soundfile.read(io.BytesIO(base64.b64decode(payload)), always_2d=True)
    return header[5:].split(";")[0], samples, rate


def checkout_files() -> set[tuple[str, int, int]]:
    """Every file of the checkout (its path, size and modification time in ns), less what Python
    and the tools write beside the code (bytecode, caches, the virtualenv, git's own files)."""
    skipped = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}
    found = set()
    for folder, folders, names in os.walk(REPOSITORY):
        folders[:] = [name for name in folders if name not in skipped]
        for name in names:
            stat = os.stat(os.path.join(folder, name))
            found.add((os.path.relpath(os.path.join(folder, name), REPOSITORY), stat.st_size, stat.st_mtime_ns))
    return found


# ---------------------------------------------------------------------------------------------
# The published schemas (tests/data/published-schemas/, their sources in its README)

SEEDS = Path(__file__).resolve().parent / "data" / "published-schemas"
SEED_TYPES = {"string": str, "integer": int, "number": float, "boolean": bool}
# The additions to the published inputs, and the only ones allowed: model_version choices after the
# published ones (every version of musicgen.versions' table the published schemas do not name), and
# optional inputs after the published inputs.
ADDED_CHOICES = {"model_version": [name for name in MODEL_VERSIONS if name not in PUBLISHED]}
# Optional inputs after every published one, each with the default that leaves a request as it was
# (no negative prompt, no adapter, an adapter's own strength: nothing to scale without one).
ADDED_DEFAULTS = {"negative_prompt": None, "lora_weights": None, "lora_scale": 1.0}
ADDED_INPUTS = list(ADDED_DEFAULTS)
PUBLISHED_ORDER = [
    "model_version",
    "prompt",
    "input_audio",
    "duration",
    "continuation",
    "continuation_start",
    "continuation_end",
    "multi_band_diffusion",
    "normalization_strategy",
    "top_k",
    "top_p",
    "temperature",
    "classifier_free_guidance",
    "output_format",
    "seed",
]
EXPECTED_ORDER = PUBLISHED_ORDER + ADDED_INPUTS


def squash(text: str) -> str:
    return " ".join(text.split())


def parse_table_seed(text: str) -> list[dict]:
    """The seed rendered as a | Field | Type | Default value | Description | table."""
    body = text.split("|---|---|---|---|", 1)[1].split("Output schema", 1)[0]
    cells = [squash(cell) for cell in body.split("|")]
    fields = []
    for index in range(1, len(cells) - 3, 5):  # each row: "", name, type, default, description
        name, type_name, default, description = cells[index : index + 4]
        if not description:  # rows without a default shift the description left
            default, description = "", default
        maximum = re.search(r"Max: (\d+)", default)
        default = default.split(" Max:")[0]
        fields.append(
            {
                "name": name,
                "type": type_name,
                "default": default or None,
                "description": description,
                "maximum": int(maximum[1]) if maximum else None,
                "choices": None,
            }
        )
    return fields


def parse_list_seed(text: str) -> list[dict]:
    """The seed rendered as plain lines: name, type, [default], [Options: ...], description."""
    body = text.split("Field Type Default value Description", 1)[1].split("Output schema", 1)[0]
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    starts = [
        i
        for i in range(len(lines) - 1)
        if re.fullmatch(r"[a-z_]+", lines[i]) and lines[i + 1].split(" ")[0] in SEED_TYPES
    ]
    fields = []
    for start, end in zip(starts, starts[1:] + [len(lines)], strict=True):
        name, type_name, *rest = lines[start:end]
        choices = None
        if "Options:" in rest:
            at = rest.index("Options:")
            choices = [choice.strip() for choice in rest[at + 1].split(",")]
            del rest[at : at + 2]
        default, description = (rest[0], rest[1]) if len(rest) == 2 else (None, rest[0])
        fields.append(
            {
                "name": name,
                "type": type_name,
                "default": default,
                "description": description,
                "maximum": None,
                "choices": choices,
            }
        )
    return fields


def load_seeds() -> list[list[dict]]:
    """Both published schemas, each as its list of input fields."""
    paths = sorted(SEEDS.glob("*.txt"))
    assert len(paths) == 2, f"expected the two published schemas in {SEEDS}"
    seeds = []
    for path in paths:
        text = path.read_text()
        seeds.append(parse_table_seed(text) if "|---|" in text else parse_list_seed(text))
    return seeds


def fine_tune(version: str, destination: Path, edit=None) -> Path:
    """A stand-in for a fine-tuned export of the demo `version` LM: the same architecture and
    format, every weight moved by a seeded random amount (or the package changed by `edit`)."""
    import omegaconf
    import torch

    from musicgen.settings import read_settings
    from musicgen.weights import layout

    package = torch.load(layout.model_dir(version, read_settings().weights_root) / layout.LM_FILE, weights_only=True)
    generator = torch.Generator().manual_seed(7)
    for key, tensor in package["best_state"].items():
        if tensor.is_floating_point() and "chroma" not in key:
            noise = torch.randn(tensor.shape, generator=generator) * 0.5
            package["best_state"][key] = (tensor.float() + noise).to(tensor.dtype)
    if edit is not None:
        cfg = omegaconf.OmegaConf.create(package["xp.cfg"])
        edit(cfg, package)
        package["xp.cfg"] = omegaconf.OmegaConf.to_yaml(cfg)
    destination.parent.mkdir(parents=True, exist_ok=True)
    torch.save(package, destination)
    return destination


def train_adapter(
    settings, folder: Path, version: str = "large", rank: int = 4, seed: int = 3, epochs: int = 2
) -> Path:
    """A LoRA adapter of the demo `version` trained by musicgen.train on two captioned scales (a
    high learning rate: a few steps move the output), written as `folder`/adapter.safetensors."""
    import zipfile

    from musicgen.train.options import TrainRequest
    from musicgen.train.run import fine_tune as run_fine_tune

    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "scales.zip"
    with zipfile.ZipFile(archive, "w") as members:
        for name, base in (("low", 220.0), ("high", 440.0)):
            members.write(write_scale(folder / f"{name}.wav", 3, rate=32000, channels=1, base=base), f"{name}.wav")
            members.writestr(f"{name}.txt", f"a {name} rising scale")
    request = TrainRequest(
        dataset_path=archive, model_version=version, epochs=epochs, batch_size=2, lr=1e-2, warmup_steps=0,
        drop_vocals=False, seed=seed, lora_rank=rank,
    )  # fmt: skip
    return run_fine_tune(request, settings, output_dir=folder).checkpoint
