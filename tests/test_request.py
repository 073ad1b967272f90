"""Request validation: every caller mistake is an InputError naming the input, value and range."""

from pathlib import Path

import pytest

from musicgen.errors import InputError
from musicgen.request import Request, validate

AUDIO = Path("song.wav")  # validation does not read the file


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"model_version": "small"},
            "model_version='small' is not allowed; choose one of: melody, large, encode-decode",
        ),
        ({"duration": 0}, "duration=0 is out of range; it must be between 1 and 60"),
        ({"duration": 61}, "duration=61 is out of range; it must be between 1 and 60"),
        ({"top_k": -1}, "top_k=-1 is out of range; it must be at least 0"),
        ({"top_p": 1.5}, "top_p=1.5 is out of range; it must be between 0.0 and 1.0"),
        ({"top_p": float("nan")}, "top_p=nan must be a finite number"),
        ({"temperature": -0.1}, "temperature=-0.1 is out of range; it must be at least 0.0"),
        (
            {"temperature": 1e-38},
            "temperature=1e-38 is too small to sample with; use 0 for greedy decoding or a value of at least 0.01",
        ),
        ({"prompt": "jazz " * 401}, "prompt is 2005 characters long; it may be at most 2000"),
        ({"classifier_free_guidance": -1}, "classifier_free_guidance=-1 is out of range; it must be between 0 and 30"),
        (
            {"normalization_strategy": "lufs"},
            "normalization_strategy='lufs' is not allowed; choose one of: loudness, clip, peak, rms",
        ),
        ({"output_format": "ogg"}, "output_format='ogg' is not allowed; choose one of: wav, mp3"),
        ({"seed": -2}, "seed=-2 is not allowed; use an integer from 0 to 4294967295"),
        ({"seed": 2**32}, "seed=4294967296 is out of range; it must be between 0 and 4294967295"),
        ({"prompt": None}, "prompt is empty and no input_audio was given"),
        ({"model_version": "encode-decode"}, "input_audio is required when model_version='encode-decode'"),
        ({"continuation": True}, "input_audio is required when continuation=True"),
        ({"model_version": "large", "input_audio": AUDIO}, "model_version='large' has no melody conditioning"),
        (
            {"continuation": True, "input_audio": AUDIO, "continuation_start": -1},
            "continuation_start=-1 must be 0 or more seconds",
        ),
        (
            {"continuation": True, "input_audio": AUDIO, "continuation_start": 5, "continuation_end": 3},
            "continuation_end=3 must be greater than continuation_start=5",
        ),
    ],
)
def test_each_mistake_is_named(changes, message):
    request = Request(**{"prompt": "calm piano", **changes})
    with pytest.raises(InputError) as raised:
        validate(request)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"seed": 0},
        {"seed": -1},
        {"temperature": 0.0},
        {"temperature": 0.01},
        {"prompt": "x" * 2000},
        {"top_k": 0, "top_p": 0.9},
        {"duration": 60},
        {"model_version": "large", "input_audio": AUDIO, "continuation": True, "continuation_end": -1},
        {"model_version": "encode-decode", "input_audio": AUDIO, "prompt": None},
        {"input_audio": AUDIO, "prompt": None},
    ],
)
def test_valid_requests_pass(changes):
    assert validate(Request(**{"prompt": "calm piano", **changes})) is None


def test_modes():
    assert Request(prompt="x").mode == "text"
    assert Request(input_audio=AUDIO).mode == "melody"
    assert Request(input_audio=AUDIO, continuation=True).mode == "continuation"
    assert Request(model_version="encode-decode", input_audio=AUDIO).mode == "encode-decode"


def test_seed_zero_is_a_seed_not_random():
    assert not Request(seed=0).wants_random_seed
    assert Request(seed=None).wants_random_seed
    assert Request(seed=-1).wants_random_seed
