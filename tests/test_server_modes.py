"""How `serve` starts coglet in each mode, as the image does (no server is started here).

The image sets COG_PREDICT_TYPE_STUB and COG_TRAIN_TYPE_STUB from cog.yaml; `--x-mode train` makes
the server run train.py's train() for POST /trainings; COG_WEIGHTS reaches predict.py's setup().
"""

import os
import sys

import pytest

from musicgen.serving.cog_yaml import CogRefs, cog_refs
from musicgen.serving.launch import serve, server_command, server_environment

REFS = CogRefs("predict.py:Predictor", "train.py:train")


def test_predict_mode_sets_both_stubs_like_the_image():
    env = server_environment(5001, REFS, base={"PATH": "/usr/bin"})
    assert env["COG_PREDICT_TYPE_STUB"] == "predict.py:Predictor" and env["COG_TRAIN_TYPE_STUB"] == "train.py:train"
    assert env["COG_MAX_CONCURRENCY"] == "2" and "COG_WEIGHTS" not in env
    assert env["TOKIO_WORKER_THREADS"] == "1"  # coglet's slot race (tests/test_operations.py)
    assert server_environment(5001, REFS, base={"TOKIO_WORKER_THREADS": "4"})["TOKIO_WORKER_THREADS"] == "4"
    assert server_command("127.0.0.1") == [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"]


def test_train_mode_runs_one_sync_training_at_a_time():
    """coglet refuses COG_MAX_CONCURRENCY > 1 for a sync train() at setup: train mode forces 1."""
    env = server_environment(5001, REFS, base={"PATH": "/usr/bin", "COG_MAX_CONCURRENCY": "4"}, train=True)
    assert env["COG_MAX_CONCURRENCY"] == "1" and env["COG_TRAIN_TYPE_STUB"] == "train.py:train"
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    assert server_command("0.0.0.0", "http://up/", train=True) == [
        *(sys.executable, "-m", "cog.server.http", "--host", "0.0.0.0"),
        *("--upload-url", "http://up/", "--x-mode", "train"),
    ]


def test_weights_become_cog_weights():
    env = server_environment(5001, "predict.py:Predictor", base={"COG_WEIGHTS": "old"}, weights="/w/ft.th")
    assert env["COG_WEIGHTS"] == "/w/ft.th" and "COG_TRAIN_TYPE_STUB" not in env
    assert server_environment(5001, REFS, base={"COG_WEIGHTS": "kept"})["COG_WEIGHTS"] == "kept"


def test_serve_refuses_weights_for_a_training_server():
    assert cog_refs().train == "train.py:train"
    with pytest.raises(ValueError, match="setup"):
        serve(train=True, weights="/w/ft.th")  # refused before anything is written or started
