"""Caller mistakes and awkward inputs through predict.py's Predictor and the CLI, and isolation.

Every mistake is one InputError whose message names the input, the value and what is allowed;
awkward input_audio files give either correct output or such an error; a prediction writes
nothing outside its own temporary folder and leaves nothing behind when it fails.
Decoding details (each format, each kind of damage) are in test_audio.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from helpers import failing_ffmpeg, ffmpeg, run_cli, sines
from helpers import predict_with_defaults as predict

from musicgen.audio.channels import bs1770_weights
from musicgen.audio.encode import EncoderError
from musicgen.audio.loudness import integrated_loudness
from musicgen.audio.read import load_audio
from musicgen.errors import InputError

RATE = 32000  # Hz, every output


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def refused(predictor, **inputs) -> str:
    """The message of the InputError the prediction raises."""
    with pytest.raises(InputError) as error:
        predict(predictor, **inputs)
    return str(error.value)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Input files by kind, written once."""
    root = tmp_path_factory.mktemp("inputs")
    paths = {}

    def wav(name: str, samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> None:
        paths[name] = root / f"{name}.wav"
        soundfile.write(paths[name], samples, rate, subtype=subtype)

    wav("song", sines(3.0, 44100, 2), 44100)
    wav("silent", np.zeros((44100 * 2, 2)), 44100)
    wav("dc-offset", np.full((16000 * 2, 1), 0.05), 16000)  # BS.1770 filters it all away
    wav("shortest", sines(0.1, 44100), 44100)
    wav("too-short", sines(0.05, 44100), 44100)
    wav("six-channels", sines(1.0, 48000, 6), 48000)
    wav("very-long", np.zeros((4000 * 21 * 60, 1)), 4000)  # 21 minutes of 4 kHz: 10 MB
    paths["empty"] = root / "empty.wav"
    paths["empty"].write_bytes(b"")
    paths["corrupt"] = root / "corrupt.mp3"
    paths["corrupt"].write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    paths["truncated"] = root / "truncated.wav"
    paths["truncated"].write_bytes(paths["song"].read_bytes()[: 44 + 4 * 44100])  # 1 s of the 3 s
    for name, codec in [("mp3", "libmp3lame"), ("flac", "flac"), ("opus", "libopus"), ("m4a", "aac"), ("aiff", None)]:
        paths[name] = root / f"song.{name}"
        ffmpeg("-i", str(paths["song"]), *(["-c:a", codec] if codec else []), str(paths[name]))
    paths["no-extension"] = root / "song"
    paths["no-extension"].write_bytes(paths["m4a"].read_bytes())
    return paths


# ---------------------------------------------------------------------------------------------
# 9. input_audio: any format, rate and channel count; bad files are named


@pytest.mark.parametrize("kind", ["song", "mp3", "flac", "opus", "m4a", "aiff", "no-extension", "six-channels"])
def test_every_input_format_round_trips_at_its_own_length(predictor, files, kind):
    wav, rate = load_audio(files[kind])
    out = predict(predictor, model_version="encode-decode", input_audio=files[kind], normalization_strategy="peak")
    samples, out_rate = soundfile.read(str(out), always_2d=True)
    assert out_rate == RATE
    assert samples.shape == (wav.shape[1] * RATE // rate, wav.shape[0])


@pytest.mark.parametrize("kind", ["silent", "dc-offset", "shortest", "truncated"])
@pytest.mark.parametrize("mode", ["melody", "continuation", "encode-decode"])
def test_awkward_but_valid_inputs_give_audio_in_every_mode(predictor, files, kind, mode):
    inputs = {"input_audio": files[kind], "duration": 1, "seed": 0}  # default normalization: loudness
    if mode == "encode-decode":
        inputs["model_version"] = "encode-decode"
    else:
        inputs.update(prompt="calm", continuation=mode == "continuation")
    wav, rate = load_audio(files[kind])
    samples, out_rate = soundfile.read(str(predict(predictor, **inputs)), always_2d=True)
    window = wav.shape[1] * RATE // rate // 640 * 640  # whole frames of the prompt
    expected = {"melody": RATE, "continuation": window + RATE, "encode-decode": wav.shape[1] * RATE // rate}[mode]
    assert out_rate == RATE and samples.shape[0] == expected
    assert np.isfinite(samples).all() and np.abs(samples).max() <= 1


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("empty", "input_audio is an empty file (0 bytes); upload an audio file (WAV, MP3, FLAC"),
        ("corrupt", "input_audio is not a readable audio file (unrecognized or damaged data)"),
        ("too-short", "input_audio is 0.050 s long; it must be at least 0.1 s of audio."),
        ("very-long", "input_audio is 1260.0 s long; at most 1200 s (20 minutes) of audio is allowed. Trim it first."),
    ],
)
@pytest.mark.parametrize("mode", ["melody", "continuation", "encode-decode"])
def test_bad_inputs_are_refused_naming_input_audio_in_every_mode(predictor, files, kind, message, mode):
    inputs = {"input_audio": files[kind], "prompt": "calm", "continuation": mode == "continuation"}
    if mode == "encode-decode":
        inputs["model_version"] = "encode-decode"
    assert refused(predictor, **inputs).startswith(message)


# ---------------------------------------------------------------------------------------------
# 10. Caller mistakes: one exception type, the input, the value, what is allowed
#
# Every rule and its exact message is in test_request.py, on validate() and validate_input_audio().
# Here: that the Predictor surfaces them, for a few representative rules, and every rule that needs
# the loaded models (top_k's bound is the codebook size) or the decoded input_audio (its length,
# its channels), which only the end-to-end path can show.


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"duration": 61}, "duration=61 is out of range; it must be between 1 and 60."),
        (
            {"model_version": "xl"},
            "model_version='xl' is not allowed; choose one of: melody, large, encode-decode, melody-large, "
            "stereo-large, stereo-melody-large, small, medium, stereo-small, stereo-medium, stereo-melody.",
        ),
        ({"seed": -5}, "seed=-5 is not allowed; use an integer from 0 to 4294967295, or -1 / leave it out"),
        ({"prompt": None}, "prompt is empty and no input_audio was given; model_version='melody' needs a prompt"),
        (
            {"model_version": "large", "input_audio": "song"},
            "model_version='large' has no melody conditioning, so input_audio with continuation=False is not "
            "supported; use a model_version with melody conditioning ('melody', 'melody-large', 'stereo-melody-large', "
            "'stereo-melody'), or set continuation=True to continue the audio.",
        ),
        ({"top_k": 2049}, "top_k=2049 is out of range; it must be between 0 and 2048."),  # the loaded codebook
    ],
)
def test_each_mistake_is_one_input_error_naming_input_value_and_range(predictor, files, inputs, message):
    if inputs.get("input_audio") == "song":
        inputs = {**inputs, "input_audio": files["song"]}
    assert refused(predictor, **{"prompt": "calm", "duration": 1, **inputs}).startswith(message)


@pytest.mark.parametrize(
    ("window", "message"),
    [
        (
            {"continuation_start": 3},
            "continuation_start=3 is past the end of input_audio (3.00 s long); it must be less",
        ),
        (
            {"continuation_end": 4},
            "continuation_end=4 is past the end of input_audio (3.00 s long); use a value up to 3,",
        ),
    ],
)
def test_continuation_window_mistakes_against_the_decoded_length_name_the_input(predictor, files, window, message):
    inputs = {"prompt": "calm", "input_audio": files["song"], "continuation": True, **window}
    assert refused(predictor, **inputs).startswith(message)


def test_a_window_shorter_than_a_tenth_of_a_second_is_refused(predictor, tmp_path):
    path = tmp_path / "two-and-a-bit.wav"
    soundfile.write(path, sines(2.05, 32000), 32000)
    message = refused(predictor, prompt="calm", input_audio=path, continuation=True, continuation_start=2)
    assert message == (
        "the continuation window continuation_start=2 to continuation_end=end of file is 0.050 s long; "
        "it must be at least 0.1 s of input_audio."
    )


def test_output_channels_mp3_cannot_hold_are_refused_before_any_model_runs(predictor, files):
    """encode-decode keeps 6 channels and MP3 holds 2. The refusal comes before EnCodec (or an LM)
    runs: every module call is counted by forward hooks on the real models."""
    models = predictor.runner.service.models
    calls: list[str] = []
    owners = {"codec": models.codec, **{f"lm:{version}": model.lm for version, model in models.models.items()}}
    hooks = [
        module.register_forward_pre_hook(lambda module, args, owner=owner: calls.append(owner))
        for owner, model in owners.items()
        for module in model.modules()
    ]
    six = {"model_version": "encode-decode", "input_audio": files["six-channels"]}
    try:
        assert refused(predictor, **six, output_format="mp3", normalization_strategy="peak").startswith(
            "output_format='mp3' holds mono or stereo audio, but this audio has 6 channels"
        )
        assert calls == []
        predict(predictor, **six, normalization_strategy="peak")  # the counter does see a real encode-decode
        assert "codec" in calls
    finally:
        for hook in hooks:
            hook.remove()


def test_a_5_1_file_gets_the_default_loudness_normalization_by_bs1770s_weights(predictor, files):
    """A plain 6-channel WAV (no channel mask) is read as 5.1, ffmpeg's default: LFE not measured,
    surrounds weighted 1.41. The output keeps the six channels at -14 LUFS by that measure."""
    out = predict(predictor, model_version="encode-decode", input_audio=files["six-channels"])  # loudness
    samples, rate = soundfile.read(str(out), always_2d=True)
    assert samples.shape[1] == 6
    wav = torch.from_numpy(samples.T.astype(np.float32))
    weights = bs1770_weights(("FL", "FR", "FC", "LFE", "BL", "BR"))
    assert integrated_loudness(wav, rate, weights).item() == pytest.approx(-14, abs=0.1)


# ---------------------------------------------------------------------------------------------
# The command line: `error: <message>`, non-zero, no traceback


@pytest.mark.slow
def test_cli_prints_a_failed_prediction_as_an_error_without_a_traceback(tmp_path, demo_weights, files):
    inputs = ("-i", "prompt=calm", "-i", f"input_audio={files['corrupt']}")
    result = run_cli("predict", *inputs, cwd=tmp_path, weights=demo_weights, timeout=300)
    assert result.returncode != 0
    assert "error: input_audio is not a readable audio file (unrecognized or damaged data)" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 11. Isolation


def test_a_prediction_writes_nothing_to_the_working_directory(predictor, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for inputs in (
        {"prompt": "calm", "input_audio": files["song"], "duration": 1},
        {"prompt": "calm", "duration": 1, "output_format": "mp3", "multi_band_diffusion": True},
    ):
        output = predict(predictor, **inputs)
        assert output.is_file() and output.parent.name.startswith("musicgen-")
        assert tmp_path not in output.parents
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """tempfile's folder pointed at an empty folder of this test's own."""
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    return private


def test_failed_predictions_leave_no_temporary_files(predictor, files, private_tmp, tmp_path, monkeypatch):
    output = predict(predictor, prompt="calm", duration=1)
    assert output.parent.parent == private_tmp
    failures = [  # each fails once the prediction's folder exists
        {"prompt": "calm", "input_audio": files["corrupt"]},
        {"prompt": "calm", "input_audio": files["song"], "continuation": True, "continuation_start": 5},
        {"prompt": "calm", "top_k": 4000},
        {"model_version": "encode-decode", "input_audio": files["six-channels"], "output_format": "mp3"},
    ]
    for inputs in failures:
        with pytest.raises(InputError):
            predict(predictor, duration=1, **inputs)
        assert list(private_tmp.iterdir()) == [], inputs
    failing_ffmpeg(tmp_path, monkeypatch)
    with pytest.raises(EncoderError) as error:
        predict(predictor, prompt="calm", duration=1, output_format="mp3")
    assert "ffmpeg failed to encode MP3 (exit status 1): Error initializing output stream 0:0" in str(error.value)
    assert list(private_tmp.iterdir()) == []
