"""Audio I/O: decoding every input format, refusing bad files, conversion, levels, output files."""

import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch
import torchaudio
from audiocraft.data.audio_utils import convert_audio, normalize_audio
from helpers import FREQUENCIES, failing_ffmpeg, ffmpeg, header_declaring, sines, zero_bit_wav

from musicgen.audio import levels, read
from musicgen.audio.channels import bs1770_weights, default_layout, undefined_for_loudness
from musicgen.audio.encode import EncoderError, metadata_comment, parse_metadata_comment, read_metadata, write_output
from musicgen.audio.levels import convert, normalize
from musicgen.audio.loudness import TORCHAUDIO_WEIGHTS, integrated_loudness
from musicgen.audio.read import DecodedAudio, load_audio
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
    elif kind == "zero-bits":
        path.write_bytes(zero_bit_wav())
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
        ("zero-bits", "input_audio has an audio stream that cannot be decoded (no decoder for its format)"),
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
    monkeypatch.setattr(read, "MAX_INPUT_SECONDS", 2)
    path = tmp_path / "long.wav"
    soundfile.write(path, np.zeros((3 * 8000, 1)), 8000, subtype="PCM_16")
    decoded = []
    monkeypatch.setattr(read, "_frame_to_float", lambda frame: decoded.append(frame))
    with pytest.raises(InputError, match=r"^input_audio is 3\.0 s long; at most 2 s of audio is allowed\. Trim"):
        load_audio(path)
    assert not decoded


def test_load_audio_refuses_long_files_whose_header_states_no_length(tmp_path, monkeypatch):
    monkeypatch.setattr(read, "MAX_INPUT_SECONDS", 2)
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


# ----------------------------------------------------------------------------------------------
# Only the part a request uses, within the decoded-size bound


@pytest.mark.parametrize("fmt", ["wav-pcm16", "flac", "mp3", "m4a-aac"])
@pytest.mark.parametrize(("start", "end"), [(0.1, 0.3), (0.0, 0.25), (0.3, None), (0.2, 9.0)])
def test_a_span_keeps_exactly_the_samples_the_whole_decode_has_there(tmp_path, fmt, start, end):
    path = encode(tmp_path, "input", 44100, 2, fmt)
    whole = load_audio(path)
    part = load_audio(path, span=read.Span(start, end))
    assert part.seconds == whole.seconds  # the file's length, for the continuation rules
    assert part.channel_names == whole.channel_names and part.sample_rate == whole.sample_rate
    last = whole.seconds if end is None else min(end, whole.seconds)
    assert torch.equal(part.between(start, last), whole.wav[:, int(start * 44100) : int(last * 44100)])
    assert part.wav.shape[-1] < whole.wav.shape[-1]
    with pytest.raises(ValueError, match="kept"):  # not kept: a mode asking for it is a bug, never a silent cut
        part.between(0, 0.05) if start > 0 else part.between(0.26, 0.45)


def test_the_bound_refuses_from_the_headers_before_decoding(tmp_path, monkeypatch):
    path = header_declaring(tmp_path, 600, 192000, 8, 0.5)  # states 10 minutes of 7.1 at 192 kHz
    decoded = []
    monkeypatch.setattr(read, "_frame_to_float", lambda frame: decoded.append(frame))
    with pytest.raises(InputError) as refused:
        load_audio(path)
    assert str(refused.value) == (
        "input_audio: the part this request uses (the whole file) would decode to 3.69 GB (600.0 s), as 32-bit "
        "samples of all its 8 channel(s) at 192000 Hz; at most 0.32 GB is decoded per request (13.9 minutes of "
        "stereo at 48 kHz). Send fewer channels, a lower sample rate, or a shorter file."
    )
    assert not decoded


def test_the_bound_counts_only_the_span_a_request_uses(tmp_path):
    path = header_declaring(tmp_path, 600, 192000, 8, 0.5)
    part = load_audio(path, span=read.Span(0, 38))  # a melody of 8 s: 38 s x 8 x 192 kHz = 0.23 GB
    assert part.wav.shape == (8, 96000) and part.seconds == 0.5  # what the cut file holds


def test_the_bound_holds_while_decoding_when_the_headers_understate(tmp_path):
    source = tmp_path / "source.wav"
    soundfile.write(source, sines(3, 8000, 2), 8000, subtype="PCM_16")
    path = tmp_path / "streamed.mka"
    with path.open("wb") as out:  # written to a pipe, Matroska carries no duration
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(source), "-f", "matroska", "-"],
                       stdout=out, check=True)  # fmt: skip
    with pytest.raises(InputError, match=r"^dataset file: the part this request uses \(the whole file\) would "
                       r"decode to more than 0\.0001 GB, as 32-bit samples of all its 2 channel"):  # fmt: skip
        load_audio(path, name="dataset file", max_bytes=100_000)  # 1.56 s of it
    assert load_audio(path, span=read.Span(0, 1), max_bytes=100_000).wav.shape == (2, 8000)


@pytest.mark.parametrize(
    ("layout", "ext"), [("5.1", "wav"), ("5.1", "flac"), ("5.1(side)", "flac"), ("7.1", "wav"), ("quad", "flac")]
)
def test_load_audio_reports_the_channel_positions_a_file_names(tmp_path, layout, ext):
    names = tuple(channel.name for channel in av.AudioLayout(layout).channels)
    frequencies = [200 + 100 * k for k in range(len(names))]  # Hz: a swapped channel shows
    sources = [f"sine=frequency={frequency}:sample_rate=48000:duration={SECONDS}" for frequency in frequencies]
    path = tmp_path / f"surround.{ext}"
    mapping = "|".join(f"{k}.0-{name}" for k, name in enumerate(names))  # input k -> output channel k
    joined = f"join=inputs={len(names)}:channel_layout={layout}:map={mapping}"
    ffmpeg(*[arg for source in sources for arg in ("-f", "lavfi", "-i", source)], "-filter_complex", joined, str(path))
    decoded = load_audio(path)
    assert decoded.channel_names == names
    assert layout != "5.1" or names == ("FL", "FR", "FC", "LFE", "BL", "BR")
    for k, frequency in enumerate(frequencies):
        assert peak_frequency(decoded.wav[k], 48000) == pytest.approx(frequency, abs=3), names[k]


@pytest.mark.parametrize("channels", range(1, read.MAX_INPUT_CHANNELS + 1))
def test_load_audio_gives_unnamed_channels_the_positions_ffmpeg_assumes(tmp_path, channels):
    """libsndfile writes plain PCM WAVs that name no positions; ffmpeg assumes its default layout."""
    path = tmp_path / "plain.wav"
    soundfile.write(path, sines(SECONDS, 8000, min(channels, len(FREQUENCIES))).repeat(2, axis=1)[:, :channels], 8000)
    with av.open(str(path)) as container:
        assert [channel.name for channel in container.streams.audio[0].codec_context.layout.channels] == [
            "NONE"
        ] * channels
    ffmpeg_default = tuple(channel.name for channel in av.AudioLayout(f"{channels}c").channels)
    assert load_audio(path).channel_names == default_layout(channels) == ffmpeg_default


def test_default_layouts_are_ffmpegs():
    assert default_layout(1) == ("FC",)
    assert default_layout(2) == ("FL", "FR")
    assert default_layout(6) == ("FL", "FR", "FC", "LFE", "BL", "BR")
    assert default_layout(8) == ("FL", "FR", "FC", "LFE", "BL", "BR", "SL", "SR")
    assert default_layout(9) == ("NONE",) * 9  # no standard layout: positions stay unnamed


def test_decoded_audio_unpacks_as_samples_and_rate_and_defaults_its_positions():
    wav = torch.zeros(6, 100)
    decoded = DecodedAudio(wav, 32000)
    samples, rate = decoded
    assert samples is wav and rate == 32000
    assert (decoded.channels, decoded.channel_names) == (6, default_layout(6))
    assert DecodedAudio(torch.zeros(2, 100), 8000, ("DL", "DR")).channel_names == ("DL", "DR")


def test_max_input_length_is_twenty_minutes():
    assert read.MAX_INPUT_SECONDS == 20 * 60
    assert "at most 1200 s (20 minutes) of audio" in read._too_long("input_audio", 1260.0)


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


@pytest.mark.parametrize(("from_rate", "channels"), [(48000, 2), (44100, 1), (22050, 2)])
def test_resampling_in_pieces_follows_audiocrafts_conversion(from_rate, channels):
    """levels.resample_in_pieces (encode-decode and training: memory that does not grow with the
    length) gives audiocraft's convert_audio up to float rounding, across piece boundaries and at
    both ends; not bit for bit (mono at 44.1 kHz differs in the last bits), so the modes compared
    with audiocraft keep convert()."""
    generator = torch.Generator().manual_seed(from_rate)
    wav = torch.rand(channels, 250_007, generator=generator) - 0.5
    pieces = levels.resample_in_pieces(wav, from_rate, 32000, piece=50_000)
    whole = convert_audio(wav, from_rate, 32000, channels)
    assert pieces.shape == whole.shape
    assert (pieces - whole).abs().max() < 1e-5


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
# Loudness by channel position (ITU-R BS.1770-4)

LOUDNESS_RATE = 16000  # Hz
SURROUND = 1.41  # BS.1770-4's weight for a channel at 60 to 120 degrees


def programme(channels: int, seed: int = 0) -> torch.Tensor:
    """[C, 3 s] noise, each channel at its own level: a silent second (under the -70 LUFS gate),
    a quiet one (under the relative gate), then a loud one."""
    generator = torch.Generator().manual_seed(seed)
    wav = torch.randn(channels, 3 * LOUDNESS_RATE, generator=generator) * 0.1
    wav *= torch.tensor([1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2][:channels])[:, None]
    envelope = torch.ones(wav.shape[-1])
    envelope[:LOUDNESS_RATE] = 0
    envelope[LOUDNESS_RATE : 2 * LOUDNESS_RATE] = 0.01
    return wav * envelope


def torchaudio_loudness(*channels: torch.Tensor) -> float:
    """torchaudio's measurement of the channels given, in its positional slots L R C Ls Rs."""
    return torchaudio.functional.loudness(torch.stack(channels), LOUDNESS_RATE).item()


def names_of(layout: str) -> tuple[str, ...]:
    return tuple(channel.name for channel in av.AudioLayout(layout).channels)


@pytest.mark.parametrize(
    ("layout", "weights"),
    [
        ("mono", (1.0,)),
        ("stereo", (1.0, 1.0)),
        ("2.1", (1.0, 1.0, 0.0)),
        ("3.0", (1.0, 1.0, 1.0)),
        ("4.0", (1.0, 1.0, 1.0, 1.0)),  # back centre, 180 degrees
        ("quad", (1.0, 1.0, SURROUND, SURROUND)),  # BL BR: the surrounds, at +-110
        ("5.0", (1.0, 1.0, 1.0, SURROUND, SURROUND)),
        ("5.0(side)", (1.0, 1.0, 1.0, SURROUND, SURROUND)),
        ("5.1", (1.0, 1.0, 1.0, 0.0, SURROUND, SURROUND)),
        ("5.1(side)", (1.0, 1.0, 1.0, 0.0, SURROUND, SURROUND)),
        ("6.1", (1.0, 1.0, 1.0, 0.0, 1.0, SURROUND, SURROUND)),
        ("7.1", (1.0, 1.0, 1.0, 0.0, 1.0, 1.0, SURROUND, SURROUND)),  # BL BR: the rear pair, beside SL SR
        ("7.1(wide)", (1.0, 1.0, 1.0, 0.0, SURROUND, SURROUND, 1.0, 1.0)),
        ("5.1.4", (1.0, 1.0, 1.0, 0.0, SURROUND, SURROUND, 1.0, 1.0, 1.0, 1.0)),  # heights: 1.0
        ("hexadecagonal", (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, SURROUND, SURROUND, *[1.0] * 6, SURROUND, SURROUND)),
        ("22.2", (1, 1, 1, 0, 1, 1, 1, 1, 1, SURROUND, SURROUND, *[1] * 7, 0, 1, 1, 1, 1, 1)),
    ],
)
def test_bs1770_weights_by_position(layout, weights):
    assert bs1770_weights(names_of(layout)) == weights


@pytest.mark.parametrize("layout", ["mono", "stereo", "3.0", "5.0", "5.0(side)"])
def test_weighted_loudness_is_torchaudios_where_its_positional_weights_are_right(layout):
    names = names_of(layout)
    weights = bs1770_weights(names)
    assert weights == TORCHAUDIO_WEIGHTS[: len(names)]
    wav = programme(len(names))
    expected = torchaudio_loudness(*wav)
    assert integrated_loudness(wav, LOUDNESS_RATE, weights).item() == pytest.approx(expected, abs=1e-4)


def test_5_1_is_measured_without_its_lfe_channel():
    wav = programme(6)
    weights = bs1770_weights(names_of("5.1"))
    measured = integrated_loudness(wav, LOUDNESS_RATE, weights)
    front_left, front_right, centre, _, back_left, back_right = wav
    assert measured.item() == pytest.approx(
        torchaudio_loudness(front_left, front_right, centre, back_left, back_right), abs=1e-4
    )
    t = torch.arange(wav.shape[-1]) / LOUDNESS_RATE
    wav[3] = 0.9 * torch.sin(2 * torch.pi * 40 * t)  # a loud LFE channel
    assert torch.equal(integrated_loudness(wav, LOUDNESS_RATE, weights), measured)


@pytest.mark.parametrize("channel_names", [("FL", "FR", "FC", "LFE", "BL", "BR"), None])  # None: 6 channels are 5.1
def test_normalize_5_1_reaches_minus_14_lufs_with_one_gain_on_every_channel(channel_names):
    wav = programme(6)
    wav[3] = 0.3 * torch.sin(2 * torch.pi * 40 * torch.arange(wav.shape[-1]) / LOUDNESS_RATE)
    out = normalize(wav, LOUDNESS_RATE, "loudness", channel_names)
    assert torchaudio_loudness(*out[[0, 1, 2, 4, 5]]) == pytest.approx(-14, abs=1e-3)
    assert out.abs().max() < 1  # no clipping: the same gain on every channel, LFE included
    gain = out[0].abs().max() / wav[0].abs().max()
    assert torch.allclose(out, wav * gain, rtol=1e-5, atol=1e-7)


def test_quad_weighs_its_back_pair_as_surrounds_and_4_0_its_back_centre_as_1():
    front_left, front_right, back_left, back_right = programme(4)
    quad = integrated_loudness(torch.stack([front_left, front_right, back_left, back_right]), LOUDNESS_RATE,
                               bs1770_weights(names_of("quad")))  # fmt: skip
    silent = torch.zeros_like(front_left)
    assert quad.item() == pytest.approx(
        torchaudio_loudness(front_left, front_right, silent, back_left, back_right), abs=1e-4
    )
    assert quad.item() != pytest.approx(torchaudio_loudness(front_left, front_right, back_left, back_right), abs=0.05)

    front_left, front_right, centre, back_centre = programme(4, seed=1)
    four = integrated_loudness(torch.stack([front_left, front_right, centre, back_centre]), LOUDNESS_RATE,
                               bs1770_weights(names_of("4.0")))  # fmt: skip
    # torchaudio has three 1.0 slots: back centre goes into a 1.41 slot at 1/sqrt(1.41) of its amplitude
    expected = torchaudio_loudness(front_left, front_right, centre, back_centre / SURROUND**0.5, silent)
    assert four.item() == pytest.approx(expected, abs=1e-4)
    assert four.item() != pytest.approx(torchaudio_loudness(front_left, front_right, centre, back_centre), abs=0.05)


def test_7_1_weighs_its_sides_as_surrounds_and_its_back_pair_as_1():
    wav = programme(8, seed=2)
    wav[2] = wav[7] = 0  # centre and side right silent: torchaudio has only five slots
    front_left, front_right, _, _, back_left, back_right, side_left, _ = wav
    measured = integrated_loudness(wav, LOUDNESS_RATE, bs1770_weights(names_of("7.1"))).item()
    expected = torchaudio_loudness(front_left, front_right, back_left, back_right / SURROUND**0.5, side_left)
    assert measured == pytest.approx(expected, abs=1e-4)
    out = normalize(programme(8), LOUDNESS_RATE, "loudness", names_of("7.1"))
    assert integrated_loudness(out, LOUDNESS_RATE, bs1770_weights(names_of("7.1"))).item() == pytest.approx(
        -14, abs=1e-3
    )


@pytest.mark.parametrize(
    ("names", "undefined"),
    [
        (("DL", "DR"), "DL DR"),
        (("FL", "FR", "AMBI0", "AMBI0"), "AMBI0"),
        (("NONE",) * 9, "NONE"),
        (("FL", "FR", "UNK", "USR3"), "UNK USR3"),
    ],
)
def test_loudness_of_a_channel_without_a_position_is_refused_naming_it(names, undefined):
    assert undefined_for_loudness(names) == undefined.split()
    wav = torch.randn(len(names), LOUDNESS_RATE) * 0.1
    with pytest.raises(ValueError, match=f"not defined for channel\\(s\\) {undefined} "):
        normalize(wav, LOUDNESS_RATE, "loudness", names)
    assert torch.equal(normalize(wav, LOUDNESS_RATE, "peak", names), normalize(wav, LOUDNESS_RATE, "peak"))
    assert undefined_for_loudness(names_of("22.2")) == []


def test_normalize_refuses_names_that_do_not_match_the_channels():
    with pytest.raises(ValueError, match="2 channel names"):
        normalize(torch.zeros(6, LOUDNESS_RATE), LOUDNESS_RATE, "loudness", ("FL", "FR"))


@pytest.mark.parametrize(
    "channel_names", [None, ("FC",), ("FL", "FR"), ("FL", "FR", "FC"), ("FL", "FR", "FC", "SL", "SR")]
)
def test_normalize_loudness_is_audiocrafts_bit_for_bit_where_torchaudio_weighs_right(channel_names):
    channels = len(channel_names) if channel_names else 2
    wav = programme(channels, seed=channels) * 3  # loud enough to clip
    expected = normalize_audio(wav.clone(), strategy="loudness", sample_rate=LOUDNESS_RATE)
    assert torch.equal(normalize(wav, LOUDNESS_RATE, "loudness", channel_names), expected)


@pytest.mark.parametrize("layout", ["5.1", "quad", "7.1"])
def test_weighted_loudness_leaves_what_it_cannot_measure_at_its_level(layout):
    names = names_of(layout)
    short = torch.randn(len(names), 3200) * 2  # 0.2 s: less than one 400 ms block
    before = short.clone()
    assert torch.equal(normalize(short, LOUDNESS_RATE, "loudness", names), short.clamp(-1, 1))
    assert torch.equal(short, before)
    silence = torch.zeros(len(names), LOUDNESS_RATE)
    assert torch.equal(normalize(silence, LOUDNESS_RATE, "loudness", names), silence)
    rumble = 0.01 * torch.sin(2 * torch.pi * 2 * torch.arange(10 * LOUDNESS_RATE) / LOUDNESS_RATE).repeat(len(names), 1)
    assert torch.equal(normalize(rumble, LOUDNESS_RATE, "loudness", names), rumble)  # 2 Hz: K-weighted away


def test_audio_only_in_the_lfe_channel_is_left_at_its_level():
    wav = torch.zeros(6, LOUDNESS_RATE)
    wav[3] = 0.5 * torch.sin(2 * torch.pi * 40 * torch.arange(LOUDNESS_RATE) / LOUDNESS_RATE)
    assert integrated_loudness(wav, LOUDNESS_RATE, bs1770_weights(names_of("5.1"))).isnan()
    assert torch.equal(normalize(wav, LOUDNESS_RATE, "loudness", names_of("5.1")), wav)


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
