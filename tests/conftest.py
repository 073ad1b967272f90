"""Test set-up: one weights root of demo checkpoints per session, configured before any test module loads.

The Hugging Face libraries read their cache paths once, when first imported: boot() runs here, at
collection, as every entry point (predict.py's setup(), train.py, the CLI) does before it imports them.
The repository is put on the path first: the tests use the tooling package beside musicgen/.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

# Two workers on two cores: each computes with one thread, and so do the processes it starts
# (set before torch is first imported). Spinning threads on a shared core make tiny models crawl.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402

REPOSITORY = str(Path(__file__).resolve().parent.parent)
sys.path.insert(0, REPOSITORY)  # tooling/, beside musicgen/, for the tests...
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [REPOSITORY, os.environ.get("PYTHONPATH")])
)  # ...and their children

from musicgen.boot import boot  # noqa: E402

WEIGHTS_ROOT = boot(Path(tempfile.mkdtemp(prefix="musicgen-test-weights-"))).weights_root


@pytest.fixture(scope="session")
def demo_weights() -> Path:
    """The session's weights root, filled with the demo checkpoints (written once)."""
    from musicgen.demo.builders import write_demo_weights

    if not (WEIGHTS_ROOT / "musicgen-melody" / "state_dict.bin").is_file():
        write_demo_weights(WEIGHTS_ROOT)
    return WEIGHTS_ROOT


@pytest.fixture(scope="session")
def settings(demo_weights):
    """The settings the tests load models with: the demo weights root, every other setting at its default."""
    from musicgen.settings import Settings

    return Settings(weights_root=demo_weights)


@pytest.fixture(scope="session")
def adapter(settings, tmp_path_factory) -> Path:
    """A rank-4 LoRA adapter of the demo `large` (seed 3), trained once per session
    (helpers.train_adapter): its folder's adapter.safetensors."""
    from helpers import train_adapter

    return train_adapter(settings, tmp_path_factory.mktemp("adapter"), rank=4, seed=3)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a shared 2-core machine spinning workers make tiny models crawl."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The session server's input limits: small, so the tests of slow and endless senders end quickly.
SERVER_INPUT_TIMEOUT = 5  # seconds
SERVER_INPUT_MAX_MB = 16
SERVER_LORA_MAX_MB = 0.2  # a demo adapter of rank 4 is 18 kB


@pytest.fixture(scope="session")
def server(demo_weights, tmp_path_factory):
    """`python -m musicgen serve` on the demo weights, READY, shared by the session; its TMPDIR is
    `server.tmp` (empty at start), so what the worker leaves behind can be inspected."""
    from helpers import checkout_files, started_server

    env = {
        "MUSICGEN_INPUT_TIMEOUT": str(SERVER_INPUT_TIMEOUT),
        "MUSICGEN_INPUT_MAX_MB": str(SERVER_INPUT_MAX_MB),
        "MUSICGEN_LORA_MAX_MB": str(SERVER_LORA_MAX_MB),
    }
    before = checkout_files()
    server = started_server(demo_weights, tmp_path_factory.mktemp("server"), env)
    try:
        server.checkout_changes = checkout_files() ^ before  # what starting it wrote into the checkout
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def predictor(demo_weights):
    """predict.py's Predictor after setup() on the demo weights, shared by the session."""
    from musicgen.serving.entry_points import load_predictor_class

    predictor = load_predictor_class()()
    predictor.setup()
    return predictor


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(WEIGHTS_ROOT, ignore_errors=True)
