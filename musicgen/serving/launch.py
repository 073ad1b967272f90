"""`python -m musicgen serve`: the real Cog HTTP server (coglet) on predict.py or train.py, as the container runs it.

The image built by `cog build` runs `python -m cog.server.http` in the model folder with
COG_PREDICT_TYPE_STUB and COG_TRAIN_TYPE_STUB set from cog.yaml and `.cog/openapi_schema.json` beside
it. `cog train` and Replicate start the same image with `--x-mode train` for trainings (POST
/trainings runs train.py's `train()`), and give a trained version's predictor its weights in
COG_WEIGHTS (predict.py's `setup(weights=...)`). `serve` does the same outside Docker: it starts
the server process, which reads the committed `.cog/openapi_schema.json` (what `cog build` writes;
tests/test_schema_generator.py keeps it in step with predict.py and train.py), so inputs are
validated exactly as in the container, and stays its parent to turn SIGTERM into a drain
(musicgen.serving.supervisor). It writes nothing into the checkout.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from musicgen.errors import SettingsError
from musicgen.serving.cog_yaml import COG_YAML, STREAMING_DIR, CogRefs, cog_refs, ref_from
from musicgen.serving.supervisor import supervise
from musicgen.settings import (
    FINE_TUNED_ENV,
    REPOSITORY,
    SLOTS_ENV,
    Settings,
    best_device,
    child_environment,
    read_settings,
)

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"  # loopback; the container binds 0.0.0.0
DEFAULT_PORT = 5000
# Runtime slots: twice the batch, at least 2. The runtime frees a slot just after answering, so a
# client's next request takes another instead of a 409, and a burst of twice the batch waits
# for a place in it (musicgen/serving/workers.py).
SLOTS_PER_BATCH_PLACE = 2
# train() is a plain (sync) function: coglet refuses COG_MAX_CONCURRENCY > 1 for it at setup.
TRAIN_SLOTS = "1"
RUNTIME_THREADS_ENV = "TOKIO_WORKER_THREADS"  # read by tokio, the runtime's async executor (server_environment)


def server_environment(
    port: int,
    refs: CogRefs | str,
    base: dict[str, str] | None = None,
    *,
    train: bool = False,
    weights: str | None = None,
) -> dict[str, str]:
    """The environment the container gives the server, on top of `base` (default: ours).

    `refs`: cog.yaml's targets (a string is a predict ref alone): COG_PREDICT_TYPE_STUB and
    COG_TRAIN_TYPE_STUB, as the image sets both. Predict mode gets COG_MAX_CONCURRENCY (default_slots)
    unless `base` sets it; train mode (`train`) exactly 1. `weights` (a path or URL) becomes COG_WEIGHTS.

    The runtime's HTTP side runs on one thread (TOKIO_WORKER_THREADS=1 unless `base` sets it):
    coglet 0.23.1 takes a slot with a `try_lock` on its pool, so two requests that arrive at the
    same moment on two of tokio's threads (one per core by default) can get `409 At capacity` with
    slots free (measured: 3 of 320 requests in bursts of 8, none on one thread). The worker's
    Python process, where predictions run, is not affected.

    coglet starts its worker as `python` found on PATH, not as sys.executable: this interpreter's
    folder goes first, or the worker cannot import coglet and the server stays STARTING forever.
    """
    refs = CogRefs(predict=refs) if isinstance(refs, str) else refs
    env = dict(child_environment() if base is None else base)
    interpreter_dir = str(Path(sys.executable).parent)  # not resolved: a venv's bin/ is a symlink farm
    env["PATH"] = os.pathsep.join([interpreter_dir, env.get("PATH", "")]).rstrip(os.pathsep)
    for name, ref in (("COG_PREDICT_TYPE_STUB", refs.predict), ("COG_TRAIN_TYPE_STUB", refs.train)):
        if ref:
            env[name] = ref
    env["PORT"] = str(port)
    if train:
        env[SLOTS_ENV] = TRAIN_SLOTS
    else:
        env.setdefault(SLOTS_ENV, str(default_slots(env)))  # an operator's own value wins
    if weights is not None:
        env[FINE_TUNED_ENV] = weights
    env.setdefault(RUNTIME_THREADS_ENV, "1")  # an operator's own value wins
    return env


def default_slots(env: dict[str, str]) -> int:
    """Twice the MUSICGEN_MAX_BATCH the worker will read from `env` (at least 2). A bad setting
    counts as unset here: the worker's setup() refuses it, naming it."""
    try:
        settings = read_settings(env)
    except SettingsError:
        settings = Settings()
    # the device (and torch, to look for CUDA) only when the setting leaves the number open
    batch = settings.max_batch or settings.max_batch_on(best_device(settings.device))
    return max(2, SLOTS_PER_BATCH_PLACE * batch)


def server_command(host: str, upload_url: str | None = None, train: bool = False) -> list[str]:
    """`python -m cog.server.http` as the image runs it; `--x-mode train` serves POST /trainings."""
    command = [sys.executable, "-m", "cog.server.http", "--host", host]
    if upload_url:
        command += ["--upload-url", upload_url]
    if train:
        command += ["--x-mode", "train"]
    return command


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    upload_url: str | None = None,
    train: bool = False,
    weights: str | None = None,
    stream: bool = False,
) -> None:
    """Run the Cog server in the repository folder, on the committed schema, as this process's
    child (musicgen.serving.supervisor: SIGTERM drains first); exits with its status. Does not return.

    train: serve cog.yaml's `train:` target (POST /trainings) instead of predict.py; one server
        runs one mode, as in the container.
    weights: a fine-tuned checkpoint (local path or http(s) URL, e.g. a training's output) that
        predict.py's setup() serves, as Replicate does for a trained version (COG_WEIGHTS).
        Predict mode only: train() is a function without setup().
    stream: serve the streaming model (streaming/cog.yaml's predictor, from its folder, on its
        own committed schema): the audio as it is made, over server-sent events.
    ValueError when cog.yaml names no target for the mode, or for `weights` with `train`.
    """
    if stream and train:
        raise ValueError("the streaming model serves predictions only: --stream or --train, not both")
    folder = STREAMING_DIR if stream else REPOSITORY
    refs = cog_refs(folder / "cog.yaml")
    if stream:
        refs = CogRefs(predict=ref_from(folder, refs.predict))
    if train and refs.train is None:
        raise ValueError(f"{COG_YAML} has no `train:` target to serve")
    if not train and refs.predict is None:
        raise ValueError(f"{COG_YAML} has no `predict:` target to serve")
    if train and weights is not None:
        raise ValueError("weights are loaded by predict.py's setup(); a training server has no setup()")
    ref = refs.train if train else refs.predict
    log.info("starting Cog server for %s on http://%s:%d", ref, host, port)
    os.chdir(folder)  # coglet resolves the refs and .cog/ against its working directory
    sys.stdout.flush()
    sys.stderr.flush()
    env = server_environment(port, refs, train=train, weights=weights)
    supervise(server_command(host, upload_url, train), env, drains=not train)
