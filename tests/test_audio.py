"""Audio I/O: decoding every input format, refusing bad files, conversion, levels, output files."""

import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch
import torchaudio
from helpers import FREQUENCIES, failing_ffmpeg, ffmpeg, sines

from musicgen.audio import decode
from musicgen.audio.decode import load_audio
from musicgen.audio.encode import EncoderError, metadata_comment, parse_metadata_comment, read_metadata, write_output
from musicgen.audio.levels import convert, normalize
from musicgen.errors import InputError

SECONDS = 0.5  # s: 2 Hz FFT bins, enough to tell the channel frequencies apart

# name: (extension, ffmpeg codec arguments, decoded rate or None for the source rate,
#        tolerated length error in seconds: encoder padding/priming that the container leaves in)
FORMATS = {
    "wav-pcm16": ("wav", ["-c:a", "pcm_s16le"], None, 0.0),
    "aiff": ("aiff", ["-c:a", "pcm_s16be"], None, 0.0),
    "flac": ("flac", ["-c:a", "flac"], None, 0.0),
    "mp3": ("mp3", ["-c:a", "libmp3lame"], None, 0.0),  # LAME's gapless header trims exactly
    "ogg-vorbis": ("ogg", ["-c:a", "libvorbis"], None, 0.03),
    "ogg-opus": ("opus", ["-c:a", "libopus"], 48000, 0.0),  # Opus always decodes at 48 kHz
    "m4a-aac": ("m4a", ["-c:a", "aac"], None, 0.03),
}
RATES = (8000, 22050, 44100, 48000)
CHANNELS = (1, 2, 6)
WAV_SUBTYPES = {"pcm_s16le": 2**-15, "pcm_s24le": 2**-23, "pcm_s32le": 2**-24, "pcm_f32le": 2**-24}  # float32 output


def encode(tmp_path: Path, name: str, rate: int, channels: int, fmt: str, extension: bool = True) -> Path:
    """A SECONDS-long file of `sines` in format `fmt`, encoded by ffmpeg from a float WAV."""
    ext, codec, _, _ = FORMATS[fmt]
    source = tmp_path / f"{name}-source.wav"
    soundfile.write(source, sines(SECONDS, rate, channels), rate, subtype="FLOAT")
    path = tmp_path / f"{name}.{ext}"
    ffmpeg("-i", str(source), *codec, str(path))
    if not extension:
        path = path.rename(tmp_path / name)
    return path


def peak_frequency(channel: torch.Tensor, rate: int) -> float:
    spectrum = torch.fft.rfft(channel.double()).abs()
    return spectrum.argmax().item() * rate / channel.shape[-1]


def assert_sines(wav: torch.Tensor, rate: int, channels: int) -> None:
    assert wav.dtype == torch.float32
    assert wav.shape[0] == channels
    for k in range(channels):
        assert peak_frequency(wav[k], rate) == pytest.approx(FREQUENCIES[k], abs=3), f"channel {k}"


# ----------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_load_audio_decodes_format_rate_and_channels(tmp_path, fmt, rate, channels):
    if fmt == "mp3" and channels > 2:
        pytest.skip("MP3 holds at most two channels")
    _, _, decoded_rate, tolerance = FORMATS[fmt]
    wav, sample_rate = load_audio(encode(tmp_path, "input", rate, channels, fmt))
    assert sample_rate == (decoded_rate or rate)
    assert abs(wav.shape[1] / sample_rate - SECONDS) <= tolerance
    assert_sines(wav, sample_rate, channels)


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_audio_probes_files_without_extension(tmp_path, fmt):
    """Cog hands data-URI uploads over as files with no extension."""
    path = encode(tmp_path, "upload", 44100, 2, fmt, extension=False)
    assert path.suffix == ""
    wav, sample_rate = load_audio(path)
    assert_sines(wav, sample_rate, 2)


def test_load_audio_trusts_content_over_a_wrong_extension(tmp_path):
    path = encode(tmp_path, "song", 44100, 2, "mp3")
    wav, sample_rate = load_audio(path.rename(tmp_path / "song.wav"))
    assert sample_rate == 44100
    assert_sines(wav, sample_rate, 2)


@pytest.mark.parametrize("codec", WAV_SUBTYPES)
def test_load_audio_wav_sample_formats_are_exact(tmp_path, codec):
    source = tmp_path / "source.wav"
    expected = sines(SECONDS, 32000, 2)
    soundfile.write(source, expected, 32000, subtype="DOUBLE")
    path = tmp_path / "input.wav"
    ffmpeg("-i", str(source), "-c:a", codec, str(path))
    wav, sample_rate = load_audio(path)
    assert sample_rate == 32000
    assert wav.shape == (2, len(expected))
    assert np.abs(wav.numpy().T - expected).max() <= WAV_SUBTYPES[codec]


def test_load_audio_takes_the_audio_of_a_video(tmp_path):
    path = tmp_path / "clip.mp4"
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc=size=64x64:rate=5:duration=1",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=1",
        "-c:v", "mpeg4", "-c:a", "aac", "-shortest", str(path),
    )  # fmt: skip
    wav, sample_rate = load_audio(path)
    assert sample_rate == 44100
    assert peak_frequency(wav[0], sample_rate) == pytest.approx(440, abs=3)


def test_load_audio_accepts_silence(tmp_path):
    path = tmp_path / "silence.wav"
    soundfile.write(path, np.zeros((16000, 2)), 16000, subtype="PCM_16")
    wav, sample_rate = load_audio(path)
    assert (sample_rate, wav.shape) == (16000, (2, 16000))
    assert not wav.any()


def test_load_audio_reads_a_truncated_wav_up_to_the_cut(tmp_path):
    path = encode(tmp_path, "input", 44100, 2, "wav-pcm16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    wav, sample_rate = load_audio(path)
    assert abs(wav.shape[1] - 44100 * SECONDS / 2) < 100
    assert_sines(wav, sample_rate, 2)


ALLOWED = "upload an audio file in one of these formats: WAV, MP3, FLAC, OGG"


def bad_file(tmp_path: Path, kind: str) -> Path:
    """A file `load_audio` must refuse, by kind."""
    path = tmp_path / (f"{kind}.m3u8" if kind == "playlist" else kind)  # hls needs its extension
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("This is not audio, just text.\n" * 20)
    elif kind == "random-bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    elif kind == "wav-header-only":
        path.write_bytes(encode(tmp_path, "full", 44100, 2, "wav-pcm16").read_bytes()[:40])
    elif kind == "truncated-m4a":  # ffmpeg writes the index (moov) last: half a file has none
        data = encode(tmp_path, "full", 44100, 2, "m4a-aac").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated-ogg":
        data = encode(tmp_path, "full", 44100, 2, "ogg-vorbis").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "damaged-m4a":  # the middle half of the audio packets overwritten with noise
        data = bytearray(encode(tmp_path, "full", 44100, 2, "m4a-aac").read_bytes())
        start, stop = len(data) // 4, 3 * len(data) // 4
        data[start:stop] = np.random.default_rng(0).integers(0, 256, stop - start, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
    elif kind == "video-only":
        ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=5:duration=1", "-c:v", "mpeg4", "-f", "mp4", str(path))
    elif kind == "image":
        ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=1:duration=1", "-frames:v", "1", "-f", "image2", str(path))
    elif kind == "playlist":  # a demuxer that would open other files: never followed
        target = encode(tmp_path, "target", 44100, 2, "mp3")
        path.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{target}\n#EXT-X-ENDLIST\n")
    elif kind == "too-short":
        soundfile.write(path, sines(0.05, 44100), 44100, subtype="PCM_16", format="WAV")
    elif kind == "low-rate":
        soundfile.write(path, sines(1, 2000, amplitude=0.1), 2000, subtype="PCM_16", format="WAV")
    elif kind == "too-many-channels":
        soundfile.write(path, np.zeros((8000, 10)), 8000, subtype="PCM_16", format="WAV")
    elif kind == "nan-samples":
        samples = sines(SECONDS, 8000)
        samples[100] = np.nan
        soundfile.write(path, samples, 8000, subtype="FLOAT", format="WAV")
    elif kind == "directory":
        path.mkdir()
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("empty", "input_audio is an empty file (0 bytes); upload an audio file (WAV, MP3, FLAC"),
        ("text", f"input_audio is not a readable audio file (unrecognized or damaged data); {ALLOWED}"),
        ("random-bytes", f"input_audio is not a readable audio file (unrecognized or damaged data); {ALLOWED}"),
        ("wav-header-only", f"input_audio is not a readable audio file (unrecognized or damaged data); {ALLOWED}"),
        ("truncated-m4a", f"input_audio is not a readable audio file (unrecognized or damaged data); {ALLOWED}"),
        ("truncated-ogg", "input_audio is not a readable audio file (it ends unexpectedly, it may be truncated)"),
        ("damaged-m4a", "audio packets could not be decoded (at most 5% may be); re-export or re-upload it"),
        ("video-only", "input_audio contains no audio stream; upload an audio file (WAV, MP3"),
        ("image", f"input_audio is not a readable audio file (not a supported audio format); {ALLOWED}"),
        ("playlist", f"input_audio is not a readable audio file (not a supported audio format); {ALLOWED}"),
        ("too-short", "input_audio is 0.050 s long; it must be at least 0.1 s of audio."),
        ("low-rate", "input_audio has a sample rate of 2000 Hz; it must be between 4000 and 192000 Hz."),
        ("too-many-channels", "input_audio has 10 channels; it must have 1 to 8."),
        ("nan-samples", "input_audio contains NaN or infinite samples; audio samples must be finite numbers."),
        ("directory", "is not a readable file; upload an audio file (WAV, MP3"),
    ],
)
def test_load_audio_refuses_bad_files_with_a_clear_message(tmp_path, kind, message):
    with pytest.raises(InputError) as error:
        load_audio(bad_file(tmp_path, kind))
    assert message in str(error.value)
    assert str(error.value).startswith("input_audio")
    assert error.value.__cause__ is None  # no decoder traceback attached
    assert error.value.__context__ is None or error.value.__suppress_context__


def test_load_audio_names_the_input_it_was_given(tmp_path):
    with pytest.raises(InputError, match=r"^melody_audio is an empty file"):
        load_audio(bad_file(tmp_path, "empty"), name="melody_audio")


def test_load_audio_refuses_long_files_from_the_header_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "MAX_INPUT_SECONDS", 2)
    path = tmp_path / "long.wav"
    soundfile.write(path, np.zeros((3 * 8000, 1)), 8000, subtype="PCM_16")
    decoded = []
    monkeypatch.setattr(decode, "_frame_to_float", lambda frame: decoded.append(frame))
    with pytest.raises(InputError, match=r"^input_audio is 3\.0 s long; at most 2 s of audio is allowed\. Trim"):
        load_audio(path)
    assert not decoded


def test_load_audio_refuses_long_files_whose_header_states_no_length(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "MAX_INPUT_SECONDS", 2)
    source = tmp_path / "source.wav"
    soundfile.write(source, sines(5, 8000), 8000, subtype="PCM_16")
    path = tmp_path / "streamed.mka"
    with path.open("wb") as out:  # written to a pipe, Matroska carries no duration
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(source), "-f", "matroska", "-"],
                       stdout=out, check=True)  # fmt: skip
    with av.open(str(path)) as container:
        assert container.duration is None and container.streams.audio[0].duration is None
    with pytest.raises(InputError, match=r"^input_audio is longer than 2 s; at most 2 s of audio is allowed"):
        load_audio(path)


def test_max_input_length_is_twenty_minutes():
    assert decode.MAX_INPUT_SECONDS == 20 * 60
    assert "at most 1200 s (20 minutes) of audio" in decode._too_long("input_audio", 1260.0)


# ----------------------------------------------------------------------------------------------
# Conversion


@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("from_rate", [8000, 22050, 44100, 48000, 32000, 44056, 5512])
def test_convert_resamples_to_32k_keeping_pitch(from_rate, channels):
    """44056 Hz (5507/4000 of 32 kHz) and 5512 Hz take the swresample path; the rest julius."""
    wav = torch.from_numpy(sines(SECONDS, from_rate, channels).T).float()
    out = convert(wav, from_rate, 32000, channels)
    assert out.shape == (channels, int(SECONDS * 32000))
    assert out.is_contiguous()
    assert_sines(out, 32000, channels)


def test_convert_channel_rules():
    stereo = torch.randn(2, 1000)
    assert torch.allclose(convert(stereo, 32000, 32000, 1), stereo.mean(dim=0, keepdim=True))
    mono = torch.randn(1, 1000)
    assert torch.equal(convert(mono, 32000, 32000, 2), mono.expand(2, -1))
    surround = torch.randn(6, 1000)
    assert torch.equal(convert(surround, 32000, 32000, 2), surround[:2])  # front left/right
    assert torch.allclose(convert(surround, 32000, 32000, 1), surround.mean(dim=0, keepdim=True))
    assert torch.equal(convert(surround, 32000, 32000, 6), surround)
    with pytest.raises(ValueError, match="less channels than requested"):
        convert(stereo, 32000, 32000, 6)


# ----------------------------------------------------------------------------------------------
# Levels


def test_normalize_peak_puts_the_peak_at_minus_1_dbfs():
    wav = torch.randn(2, 32000) * 0.1
    out = normalize(wav, 32000, "peak")
    assert out.abs().max().item() == pytest.approx(10 ** (-1 / 20), rel=1e-5)


def test_normalize_rms_puts_the_mono_rms_at_minus_18_db():
    wav = torch.from_numpy(sines(SECONDS, 32000, amplitude=0.01).T).float().repeat(2, 1)
    out = normalize(wav, 32000, "rms")
    assert out.mean(dim=0).pow(2).mean().sqrt().item() == pytest.approx(10 ** (-18 / 20), rel=1e-4)
    assert out.abs().max() < 1  # it did not need to clip


def test_normalize_loudness_reaches_minus_14_lufs():
    wav = torch.randn(1, 16000) * 0.01  # short: torchaudio's IIR filter runs in Python without its C++ ops
    out = normalize(wav, 32000, "loudness")
    assert torchaudio.functional.loudness(out, 32000).item() == pytest.approx(-14, abs=0.1)


def test_normalize_clip_applies_no_gain_and_clamps_at_minus_1_dbfs():
    wav = torch.linspace(-1.5, 1.5, 32000).unsqueeze(0)
    out = normalize(wav, 32000, "clip")
    limit = 10 ** (-1 / 20)
    assert out.abs().max().item() == pytest.approx(limit)
    inside = wav.abs() < limit
    assert torch.equal(out[inside], wav[inside])


@pytest.mark.parametrize("strategy", ["loudness", "clip", "peak", "rms"])
def test_normalize_leaves_silence_and_the_input_alone(strategy):
    silence = torch.zeros(2, 32000)
    assert torch.equal(normalize(silence, 32000, strategy), silence)
    wav = torch.randn(1, 16000)
    before = wav.clone()
    normalize(wav, 32000, strategy)
    assert torch.equal(wav, before)


def test_normalize_loudness_on_less_than_one_measuring_block_only_clips():
    wav = torch.randn(1, 3200) * 2  # 0.1 s: BS.1770 measures 400 ms blocks
    assert torch.equal(normalize(wav, 32000, "loudness"), wav.clamp(-1, 1))


# ----------------------------------------------------------------------------------------------
# Output files and metadata

METADATA = {
    "seed": "123",
    "model_version": "melody",
    "prompt": 'it\'s a "lo-fi" beat; 90 bpm\nwith ünïcode 🎵, $HOME, tabs\tand  spaces = fine',
    "empty": "",
}


def generated(seconds: float = 2.0, channels: int = 2) -> torch.Tensor:
    return torch.from_numpy(sines(seconds, 32000, channels, amplitude=0.5).T).float()


def test_metadata_comment_format_and_inverse():
    comment = metadata_comment({"seed": "123", "model_version": "melody"})
    assert comment == "musicgen seed=123 model_version=melody"
    assert parse_metadata_comment(comment) == {"seed": "123", "model_version": "melody"}
    assert parse_metadata_comment(metadata_comment(METADATA)) == METADATA
    assert list(parse_metadata_comment(metadata_comment(METADATA))) == list(METADATA)  # order kept
    assert parse_metadata_comment("recorded by someone else") == {}
    with pytest.raises(ValueError, match="metadata key"):
        metadata_comment({"two words": "x"})
    with pytest.raises(TypeError, match="must be a string"):
        metadata_comment({"seed": 123})


def test_write_output_wav_is_16_bit_pcm_with_the_metadata_in_its_info_chunk(tmp_path):
    wav = generated()
    path = write_output(wav, 32000, tmp_path, "output", "wav", METADATA)
    assert path == tmp_path / "output.wav"
    info = soundfile.info(path)
    assert (info.format, info.subtype, info.samplerate, info.channels, info.frames) == (
        "WAV", "PCM_16", 32000, 2, 64000,
    )  # fmt: skip
    assert b"LIST" in path.read_bytes() and b"ICMT" in path.read_bytes()
    with soundfile.SoundFile(path) as file:
        assert file.comment == metadata_comment(METADATA)
    assert read_metadata(path) == METADATA
    decoded, rate = load_audio(path)
    assert rate == 32000
    assert (decoded - wav).abs().max() <= 2**-15


def test_write_output_mp3_is_320_kbps_with_the_metadata_in_its_id3_comment(tmp_path):
    wav = generated()
    path = write_output(wav, 32000, tmp_path, "output", "mp3", METADATA)
    assert path == tmp_path / "output.mp3"
    assert path.read_bytes()[:3] == b"ID3"
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert (container.format.name, stream.codec_context.name, stream.bit_rate) == ("mp3", "mp3float", 320000)
        assert container.metadata["comment"] == metadata_comment(METADATA)
    assert read_metadata(path) == METADATA
    decoded, rate = load_audio(path)
    assert rate == 32000
    assert decoded.shape == wav.shape  # LAME's gapless header trims priming and padding
    correlation = torch.nn.functional.cosine_similarity(decoded.flatten(), wav.flatten(), dim=0)
    assert correlation > 0.99


@pytest.mark.parametrize("output_format", ["wav", "mp3"])
@pytest.mark.parametrize("channels", [1, 2])
def test_write_output_is_byte_identical_for_the_same_audio(tmp_path, output_format, channels):
    wav = generated(channels=channels)
    first = write_output(wav, 32000, tmp_path, "first", output_format, METADATA).read_bytes()
    second = write_output(wav.clone(), 32000, tmp_path, "second", output_format, METADATA).read_bytes()
    assert first == second
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"first.{output_format}", f"second.{output_format}"]


def test_write_output_clips_out_of_range_samples(tmp_path):
    wav = torch.tensor([[-3.0, -1.0, 0.0, 0.5, 1.0, 3.0] * 1000])
    path = write_output(wav, 32000, tmp_path, "output", "wav", {})
    samples, _ = soundfile.read(path, dtype="int16")
    assert samples[:6].tolist() == [-32768, -32768, 0, 16384, 32767, 32767]


def test_write_output_refuses_what_the_request_rules_exclude(tmp_path):
    """Callers get request.validate's messages first; the writer still refuses, and writes nothing."""
    with pytest.raises(ValueError, match=r"output_format must be one of \('wav', 'mp3'\), got 'flac'"):
        write_output(generated(), 32000, tmp_path, "output", "flac", {})
    with pytest.raises(ValueError, match="mp3 holds at most 2 channels, got 6"):
        write_output(torch.zeros(6, 3200), 32000, tmp_path, "output", "mp3", {})
    assert not list(tmp_path.iterdir())


def test_write_output_mp3_encoder_failure_carries_ffmpeg_message_and_leaves_no_file(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    failing_ffmpeg(tmp_path, monkeypatch)
    with pytest.raises(EncoderError) as error:
        write_output(generated(), 32000, out, "output", "mp3", METADATA)
    assert "ffmpeg failed to encode MP3 (exit status 1)" in str(error.value)
    assert "encoder libmp3lame failed" in str(error.value)
    assert not list(out.iterdir())


def test_write_output_mp3_without_ffmpeg_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    with pytest.raises(EncoderError, match="ffmpeg is not installed or not on PATH"):
        write_output(generated(), 32000, tmp_path, "output", "mp3", {})
    assert not list(tmp_path.iterdir())


def test_read_metadata_of_foreign_and_bad_files(tmp_path):
    plain = tmp_path / "plain.wav"
    soundfile.write(plain, sines(SECONDS, 8000), 8000, subtype="PCM_16")
    assert read_metadata(plain) == {}
    with pytest.raises(InputError, match="could not be opened as audio to read its metadata"):
        read_metadata(bad_file(tmp_path, "text"))
