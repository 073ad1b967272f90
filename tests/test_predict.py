"""Text-to-music through predict.py's Predictor on the demo weights: format, length, seeds."""

import re

import numpy as np
import pytest
import soundfile
from helpers import predict_with_defaults as predict

from musicgen.audio.encode import read_metadata


@pytest.mark.parametrize("model_version", ["melody", "large"])
def test_text_to_music_is_a_32khz_16bit_wav_of_exact_length(predictor, model_version):
    path = predict(predictor, model_version=model_version, prompt="calm piano", duration=2, seed=3)
    info = soundfile.info(str(path))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", 32000, 1)
    assert info.frames == 2 * 32000
    samples, _ = soundfile.read(str(path), dtype="float32")
    assert np.isfinite(samples).all()
    assert np.sqrt(np.mean(samples**2)) > 1e-3  # not silent
    assert read_metadata(path) == {"model_version": model_version, "seed": "3"}


def test_same_inputs_and_seed_give_identical_bytes(predictor):
    first = predict(predictor, prompt="calm piano", duration=1, seed=0).read_bytes()
    second = predict(predictor, prompt="calm piano", duration=1, seed=0).read_bytes()
    other_seed = predict(predictor, prompt="calm piano", duration=1, seed=1).read_bytes()
    assert first == second
    assert first != other_seed


def test_each_prediction_writes_into_a_fresh_folder(predictor):
    zero = predict(predictor, prompt="calm piano", duration=1, seed=0)
    assert re.fullmatch(r"musicgen-melody-0-[0-9a-f]{12}\.wav", zero.name)  # seed 0 is a seed, not "random"
    again = predict(predictor, prompt="calm piano", duration=1, seed=0)
    assert again.parent != zero.parent and again.parent.name.startswith("musicgen-")
    assert not zero.parent.exists()  # the previous output, already delivered, is cleared


@pytest.mark.parametrize("seed", [None, -1])
def test_random_seed_is_drawn_logged_and_stored(predictor, seed, caplog):
    caplog.set_level("INFO", logger="musicgen.serving.service")
    path = predict(predictor, prompt="calm piano", duration=1, seed=seed)
    logged = re.findall(r"seed (\d+) \(model_version=", caplog.text)
    assert len(logged) == 1
    drawn = int(logged[0])
    assert 0 <= drawn <= 2**32 - 1
    assert read_metadata(path)["seed"] == str(drawn)
    original = path.read_bytes()  # the next prediction clears this one's folder
    replay = predict(predictor, prompt="calm piano", duration=1, seed=drawn)
    assert replay.read_bytes() == original


def test_prompt_changes_the_music(predictor):
    piano = predict(predictor, model_version="large", prompt="calm piano", duration=1, seed=5).read_bytes()
    drums = predict(predictor, model_version="large", prompt="loud drums", duration=1, seed=5).read_bytes()
    assert piano != drums
