"""`python -m musicgen serve`: the real Cog HTTP server (coglet) on predict.py, as the container runs it.

The image built by `cog build` runs `python -m cog.server.http` in the model folder with
COG_PREDICT_TYPE_STUB set from cog.yaml and `.cog/openapi_schema.json` beside it. `serve` does the
same outside Docker: it (re)writes the schema from predict.py, so inputs are validated exactly as in
the container, then replaces itself with the server process.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import yaml

from musicgen.dev.schema import openapi
from musicgen.runtime import SLOTS_ENV
from musicgen.weights.layout import REPOSITORY

log = logging.getLogger(__name__)

COG_YAML = REPOSITORY / "cog.yaml"
DEFAULT_HOST = "127.0.0.1"  # loopback; the container binds 0.0.0.0
DEFAULT_PORT = 5000
# Two runtime slots: the runtime frees a slot just after answering, so a client's next request
# takes the other one instead of a 409; predictions still run one at a time (musicgen/runner.py).
DEFAULT_SLOTS = "2"


def predict_ref(config_file: Path = COG_YAML) -> str:
    """cog.yaml's `predict:` (or `run:`) reference, e.g. "predict.py:Predictor"."""
    config = yaml.safe_load(config_file.read_text()) or {}
    ref = config.get("run") or config.get("predict")
    if not isinstance(ref, str) or ".py:" not in ref:
        raise ValueError(f"{config_file}: `predict:` must look like 'predict.py:Predictor', got {ref!r}")
    return ref


def server_environment(port: int, ref: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the container gives the server, on top of `base` (default: ours), with
    COG_MAX_CONCURRENCY=2 unless `base` sets it.

    coglet starts its worker as `python` found on PATH, not as sys.executable: this interpreter's
    folder goes first, or the worker cannot import coglet and the server stays STARTING forever.
    """
    env = dict(os.environ if base is None else base)
    interpreter_dir = str(Path(sys.executable).parent)  # not resolved: a venv's bin/ is a symlink farm
    env["PATH"] = os.pathsep.join([interpreter_dir, env.get("PATH", "")]).rstrip(os.pathsep)
    env["COG_PREDICT_TYPE_STUB"] = ref
    env["PORT"] = str(port)
    env.setdefault(SLOTS_ENV, DEFAULT_SLOTS)  # an operator's own value wins
    return env


def server_command(host: str, upload_url: str | None = None) -> list[str]:
    command = [sys.executable, "-m", "cog.server.http", "--host", host]
    if upload_url:
        command += ["--upload-url", upload_url]
    return command


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, upload_url: str | None = None) -> None:
    """Write the schema, then exec the Cog server in the repository folder. Does not return."""
    ref = predict_ref()
    schema_file = openapi.write(predict_ref=ref)
    log.info("schema %s; starting Cog server for %s on http://%s:%d", schema_file, ref, host, port)
    os.chdir(REPOSITORY)  # coglet resolves the predict ref and .cog/ against its working directory
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, server_command(host, upload_url), server_environment(port, ref))
