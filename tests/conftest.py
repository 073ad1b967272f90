"""Test set-up: one weights root of demo checkpoints per session, chosen before any import.

musicgen.offline reads MUSICGEN_WEIGHTS when first imported, so it is set here, at collection.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

WEIGHTS_ROOT = Path(tempfile.mkdtemp(prefix="musicgen-test-weights-"))
os.environ["MUSICGEN_WEIGHTS"] = str(WEIGHTS_ROOT)


@pytest.fixture(scope="session")
def demo_weights() -> Path:
    """The session's weights root, filled with the demo checkpoints (written once)."""
    from musicgen.demo import write_demo_weights

    if not (WEIGHTS_ROOT / "musicgen-melody" / "state_dict.bin").is_file():
        write_demo_weights(WEIGHTS_ROOT)
    return WEIGHTS_ROOT


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a shared 2-core machine spinning workers make tiny models crawl."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def predictor(demo_weights):
    """predict.py's Predictor after setup() on the demo weights, shared by the session."""
    from musicgen.cli import load_predictor_class

    predictor = load_predictor_class()()
    predictor.setup()
    return predictor


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(WEIGHTS_ROOT, ignore_errors=True)
