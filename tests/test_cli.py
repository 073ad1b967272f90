"""`python -m musicgen`: the same Predictor as Cog, with `cog predict`'s -i key=value syntax."""

from pathlib import Path

import pytest
import soundfile
from helpers import run_cli, zero_bit_wav

from musicgen.cli import parse_inputs
from musicgen.errors import InputError
from musicgen.serving.entry_points import input_fields, load_predictor_class


def test_help_lists_the_commands(tmp_path, demo_weights):
    result = run_cli("--help", cwd=tmp_path, weights=demo_weights)
    assert result.returncode == 0
    for command in ("predict", "serve", "download", "demo-weights"):
        assert command in result.stdout


@pytest.mark.slow
def test_predict_writes_the_output_and_prints_path_and_seed(tmp_path, demo_weights):
    args = ("predict", "-i", "prompt=calm piano", "-i", "duration=1", "-i", "seed=11", "-i", "top_p=0.9")
    first = run_cli(*args, "-o", "first.wav", cwd=tmp_path, weights=demo_weights)
    assert first.returncode == 0, first.stderr
    assert f"output: {tmp_path / 'first.wav'}" in first.stdout
    assert "seed: 11" in first.stdout
    info = soundfile.info(str(tmp_path / "first.wav"))
    assert (info.samplerate, info.frames) == (32000, 32000)
    second = run_cli(*args, "-o", "second.wav", cwd=tmp_path, weights=demo_weights)
    assert (tmp_path / "first.wav").read_bytes() == (tmp_path / "second.wav").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.wav", "second.wav"]
    assert second.returncode == 0


@pytest.mark.slow
def test_a_caller_mistake_exits_non_zero_with_the_message_and_no_traceback(tmp_path, demo_weights):
    result = run_cli("predict", "-i", "prompt=x", "-i", "duration=61", cwd=tmp_path, weights=demo_weights)
    assert result.returncode == 2
    assert "error: duration=61 is out of range; it must be between 1 and 60" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_an_audio_stream_without_a_decoder_is_a_clear_error_naming_input_audio(tmp_path, demo_weights):
    """A WAV of 0 bits per sample once ended the command with an AttributeError's traceback."""
    (tmp_path / "zero-bits.wav").write_bytes(zero_bit_wav())
    result = run_cli(
        "predict", "-i", "input_audio=zero-bits.wav", "-i", "duration=1", cwd=tmp_path, weights=demo_weights
    )
    assert result.returncode == 2, result.stderr
    assert "error: input_audio has an audio stream that cannot be decoded" in result.stderr
    assert "Traceback" not in result.stderr


def test_values_are_parsed_by_the_schema_types(tmp_path):
    fields = input_fields(load_predictor_class())
    audio = tmp_path / "in.wav"
    audio.write_bytes(b"RIFF")
    values = parse_inputs(
        ["duration=12", "top_p=0.5", "continuation=true", "input_audio=" + str(audio), "prompt=a=b"], fields
    )
    assert values["duration"] == 12 and type(values["duration"]) is int
    assert values["top_p"] == 0.5 and type(values["top_p"]) is float
    assert values["continuation"] is True
    assert Path(values["input_audio"]) == audio and type(values["input_audio"]).__name__ == "Path"
    assert values["prompt"] == "a=b"
    assert values["model_version"] == "melody" and values["seed"] is None  # untouched defaults
    url = "https://example.com/melody.mp3"  # fetched by the prediction, as over HTTP
    assert parse_inputs([f"input_audio={url}"], fields)["input_audio"] == url
    # lora_weights is text in the schema (a URL over HTTP); the command line also takes a local file
    adapter = tmp_path / "adapter.safetensors"
    adapter.write_bytes(b"{}")
    assert parse_inputs([f"lora_weights={adapter}"], fields)["lora_weights"] == adapter
    assert parse_inputs(["lora_weights=data:,x"], fields)["lora_weights"] == "data:,x"
    assert parse_inputs(["lora_scale=0.5"], fields)["lora_scale"] == 0.5


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("duration=ten", "duration='ten' is not a valid int"),
        ("continuation=maybe", "continuation='maybe' is not a valid bool"),
        ("tempo=120", "unknown input 'tempo'; the inputs are: model_version, prompt"),
        ("input_audio=/no/such/file.wav", "input_audio='/no/such/file.wav': no such file"),
        ("lora_weights=/no/such/adapter", "lora_weights='/no/such/adapter': no such file"),
        ("duration", "-i 'duration' must be written key=value"),
    ],
)
def test_bad_pairs_are_named(pair, message):
    with pytest.raises(InputError) as raised:
        parse_inputs([pair], input_fields(load_predictor_class()))
    assert message in str(raised.value)
