"""Request validation: every caller mistake is an InputError naming the input, value and range.

The thorough table: every rule of musicgen/request.py with its exact message. test_errors.py
checks end to end that the Predictor surfaces them (and the rules needing models or decoded audio).
"""

import dataclasses
from pathlib import Path

import pytest

from musicgen.errors import InputError
from musicgen.input_rules import MAX_DURATION, NORMALIZATION_STRATEGIES, OUTPUT_FORMATS
from musicgen.request import Request, continuation_bounds, validate, validate_input_audio
from musicgen.settings import REPOSITORY
from musicgen.versions import MODEL_VERSIONS
from tooling.schema.inputs import NONE, read_inputs

AUDIO = Path("song.wav")  # validation does not read the file


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"model_version": "xl"},
            "model_version='xl' is not allowed; choose one of: melody, large, encode-decode, melody-large, "
            "stereo-large, stereo-melody-large, small, medium, stereo-small, stereo-medium, stereo-melody.",
        ),
        (
            {"negative_prompt": "n" * 2001},
            "negative_prompt is 2001 characters long; it may be at most 2000 (the text encoder reads about 512 tokens).",
        ),
        ({"negative_prompt": "no\0drums"}, "negative_prompt holds a NUL character; send text without it."),
        ({"duration": 0}, "duration=0 is out of range; it must be between 1 and 60."),
        ({"duration": 61}, "duration=61 is out of range; it must be between 1 and 60."),
        ({"top_k": -1}, "top_k=-1 is out of range; it must be at least 0."),
        ({"top_p": 1.5}, "top_p=1.5 is out of range; it must be between 0.0 and 1.0."),
        ({"top_p": float("nan")}, "top_p=nan must be a finite number."),
        ({"temperature": -0.1}, "temperature=-0.1 is out of range; it must be at least 0.0."),
        ({"temperature": -1.0}, "temperature=-1.0 is out of range; it must be at least 0.0."),
        (
            {"temperature": 1e-38},
            "temperature=1e-38 is too small to sample with; use 0 for greedy decoding or a value of at least 0.01.",
        ),
        (
            {"prompt": "jazz " * 401},
            "prompt is 2005 characters long; it may be at most 2000 (the text encoder reads about 512 tokens).",
        ),
        ({"classifier_free_guidance": -1}, "classifier_free_guidance=-1 is out of range; it must be between 0 and 30."),
        ({"classifier_free_guidance": 31}, "classifier_free_guidance=31 is out of range; it must be between 0 and 30."),
        (
            {"normalization_strategy": "lufs"},
            "normalization_strategy='lufs' is not allowed; choose one of: loudness, clip, peak, rms.",
        ),
        ({"output_format": "ogg"}, "output_format='ogg' is not allowed; choose one of: wav, mp3."),
        ({"output_format": "flac"}, "output_format='flac' is not allowed; choose one of: wav, mp3."),
        (
            {"seed": -2},
            "seed=-2 is not allowed; use an integer from 0 to 4294967295, or -1 / leave it out for a random seed.",
        ),
        (
            {"seed": -5},
            "seed=-5 is not allowed; use an integer from 0 to 4294967295, or -1 / leave it out for a random seed.",
        ),
        ({"seed": 2**32}, "seed=4294967296 is out of range; it must be between 0 and 4294967295."),
        (
            {"prompt": None},
            "prompt is empty and no input_audio was given; model_version='melody' needs a prompt, an input_audio, "
            "or both.",
        ),
        ({"model_version": "encode-decode"}, "input_audio is required when model_version='encode-decode'."),
        ({"continuation": True}, "input_audio is required when continuation=True: it is the audio to continue."),
        (
            {"model_version": "large", "input_audio": AUDIO},
            "model_version='large' has no melody conditioning, so input_audio with continuation=False is not "
            "supported; use a model_version with melody conditioning ('melody', 'melody-large', 'stereo-melody-large', "
            "'stereo-melody'), "
            "or set continuation=True to continue the audio.",
        ),
        (
            {"continuation": True, "input_audio": AUDIO, "continuation_start": -1},
            "continuation_start=-1 must be 0 or more seconds.",
        ),
        (
            {"continuation": True, "input_audio": AUDIO, "continuation_start": 5, "continuation_end": 3},
            "continuation_end=3 must be greater than continuation_start=5 (or -1 / left out for the end of the file).",
        ),
        (
            {"continuation": True, "input_audio": AUDIO, "continuation_start": 2, "continuation_end": 2},
            "continuation_end=2 must be greater than continuation_start=2 (or -1 / left out for the end of the file).",
        ),
    ],
)
def test_each_mistake_is_named(changes, message):
    request = Request(**{"prompt": "calm piano", **changes})
    with pytest.raises(InputError) as raised:
        validate(request)
    assert str(raised.value) == message


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


SERVED = {"melody": 2048, "large": 2048}  # version -> codebook size, as LoadedModels.servable gives it


@pytest.mark.parametrize(
    ("changes", "served", "message"),
    [
        (
            {"model_version": "melody"},
            {"large": 2048},
            "model_version='melody' is not loaded by this deployment; it serves large "
            "(the operator preloads with MUSICGEN_MODEL_VERSIONS; any other version is served once its weights "
            "are in place: python -m musicgen download melody).",
        ),
        ({"top_k": 2049}, SERVED, "top_k=2049 is out of range; it must be between 0 and 2048."),
    ],
)
def test_what_the_deployment_serves_bounds_the_request(changes, served, message):
    request = Request(**{"prompt": "calm piano", **changes})
    assert validate(request) is None  # the request alone is fine
    with pytest.raises(InputError) as raised:
        validate(request, served)
    assert str(raised.value) == message
    assert validate(Request(prompt="calm piano", top_k=2048), SERVED) is None


MONO = ("FC",)
FIVE_ONE = ("FL", "FR", "FC", "LFE", "BL", "BR")


@pytest.mark.parametrize(
    ("changes", "channel_names", "seconds", "message"),
    [
        ({"continuation": True, "continuation_start": 5}, MONO, 4.0,
         "continuation_start=5 is past the end of input_audio (4.00 s long); it must be less than 4.00."),
        ({"continuation": True, "continuation_end": 9}, MONO, 4.0,
         "continuation_end=9 is past the end of input_audio (4.00 s long); use a value up to 4, or -1 for the end "
         "of the file."),
        ({"continuation": True}, MONO, 31.0,
         "the continuation window continuation_start=0 to continuation_end=end of file is 31.00 s long; "
         "it may be at most 30 s (the model's context)."),
        ({"continuation": True, "continuation_start": 2}, MONO, 2.05,
         "the continuation window continuation_start=2 to continuation_end=end of file is 0.050 s long; "
         "it must be at least 0.1 s of input_audio."),
        ({"model_version": "encode-decode", "output_format": "mp3", "normalization_strategy": "peak"}, ("FL", "FR", "FC"), 1.0,
         "output_format='mp3' holds mono or stereo audio, but this audio has 3 channels (encode-decode keeps "
         "input_audio's channels); use output_format='wav'."),
        ({"model_version": "encode-decode"}, ("AMBI0", "AMBI1", "AMBI2", "AMBI3"), 1.0,
         "normalization_strategy='loudness' (ITU-R BS.1770) weighs each channel by its loudspeaker position, but "
         "this audio's channel(s) AMBI0 AMBI1 AMBI2 AMBI3 have none (layout: AMBI0 AMBI1 AMBI2 AMBI3; encode-decode "
         "keeps input_audio's channels); use normalization_strategy 'peak', 'rms' or 'clip'."),
        ({"model_version": "encode-decode"}, ("FL", "FR", "DL", "DR"), 1.0,
         "normalization_strategy='loudness' (ITU-R BS.1770) weighs each channel by its loudspeaker position, but "
         "this audio's channel(s) DL DR have none (layout: FL FR DL DR; encode-decode keeps input_audio's "
         "channels); use normalization_strategy 'peak', 'rms' or 'clip'."),
    ],
)  # fmt: skip
def test_the_decoded_input_bounds_the_request(changes, channel_names, seconds, message):
    request = Request(**{"prompt": "calm piano", "input_audio": AUDIO, **changes})
    validate(request)
    with pytest.raises(InputError) as raised:
        validate_input_audio(request, channel_names, seconds)
    assert str(raised.value) == message


def test_the_decoded_input_within_bounds_passes():
    assert validate_input_audio(Request(input_audio=AUDIO, continuation=True), ("FL", "FR"), 30.0) is None
    encode_decode = Request(model_version="encode-decode", input_audio=AUDIO)  # loudness, by BS.1770's positions:
    for layout in [("FL", "FR", "FC", "SL", "SR"), FIVE_ONE, ("FL", "FR", "FC", "LFE", "BL", "BR", "SL", "SR")]:
        assert validate_input_audio(encode_decode, layout, 600.0) is None  # 5.0, 5.1, 7.1
    wav_peak = Request(model_version="encode-decode", input_audio=AUDIO, normalization_strategy="peak")
    assert validate_input_audio(wav_peak, ("AMBI0", "AMBI1", "AMBI2", "AMBI3"), 1.0) is None
    assert continuation_bounds(Request(input_audio=AUDIO, continuation_start=1, continuation_end=-1), 4.5) == (1, 4.5)


def test_request_declares_what_predict_py_declares():
    """Request's fields, defaults, choices and bounds are predict.py's Input(...)s: they cannot drift apart."""
    fields, _ = read_inputs((REPOSITORY / "predict.py").read_text())
    declared = {field.name: field for field in fields}
    assert [field.name for field in dataclasses.fields(Request)] == list(declared)
    for field in dataclasses.fields(Request):
        default = declared[field.name].default
        assert field.default == (None if default is NONE else default), field.name
    choices = {"model_version": MODEL_VERSIONS, "normalization_strategy": NORMALIZATION_STRATEGIES}
    choices["output_format"] = OUTPUT_FORMATS
    for name, allowed in choices.items():
        assert declared[name].keywords["choices"] == list(allowed), name
    assert declared["duration"].keywords["le"] == MAX_DURATION


def test_the_request_s_own_mistakes_are_named_before_what_the_deployment_serves():
    """As before the rules moved here: the prompt check comes first, top_k against the codebook after."""
    with pytest.raises(InputError) as raised:
        validate(Request(prompt=None, top_k=5000), SERVED)
    assert str(raised.value).startswith("prompt is empty and no input_audio was given")
