"""Audio I/O and levels: decoding inputs, resampling, normalization, writing and tagging outputs."""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
from pathlib import Path

import av
import numpy as np
import soundfile
import torch
import torchaudio

# isort: off
from musicgen import offline  # noqa: F401  (configures the hub cache before audiocraft loads)
from audiocraft.data.audio_utils import convert_audio, convert_audio_channels, normalize_audio
from musicgen import iir
from musicgen.errors import InputError
from musicgen.request import OUTPUT_FORMATS

# isort: on


MIN_INPUT_SECONDS = 0.1  # shorter inputs carry no usable melody or prompt
MAX_INPUT_SECONDS = 20 * 60  # 20 minutes; checked from the container metadata before decoding
MAX_INPUT_CHANNELS = 8  # 7.1 surround; more is refused (memory grows with channels)
MIN_INPUT_SAMPLE_RATE = 4000  # Hz
MAX_INPUT_SAMPLE_RATE = 192000  # Hz
MAX_DAMAGED_FRACTION = 0.05  # undecodable packets skipped (more than one, and more than this, is refused)
INPUT_FORMATS = "WAV, MP3, FLAC, OGG (Vorbis or Opus), M4A/AAC, AIFF, WebM/Matroska audio"
# ffmpeg demuxers allowed to open an input. A whitelist, because some demuxers (hls, concat,
# image2, ...) open further files or URLs named inside the upload.
INPUT_DEMUXERS = "wav,w64,mp3,flac,ogg,mov,aac,aiff,matroska,caf,au,wv"
_OPEN_OPTIONS = {"format_whitelist": INPUT_DEMUXERS, "protocol_whitelist": "file"}

MAX_LOUDNESS_CHANNELS = 5  # torchaudio's BS.1770 channel weights: L, R, C, Ls, Rs
LOUDNESS_ENERGY_FLOOR = 2e-3  # RMS under which audiocraft's loudness step applies no gain
MP3_BITRATE = "320k"  # audiocraft's own MP3 bitrate
FFMPEG_TIMEOUT = 600  # seconds; encoding a minute of audio takes well under one
METADATA_TAG = "musicgen"  # first word of the comment that write_output stores
_METADATA_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")

# Largest julius (audiocraft's resampler) kernel we build: rates whose ratio does not reduce to
# small integers (44056 -> 32000 is 5507/4000) take seconds to gigabytes; those go through
# ffmpeg's swresample instead.
_MAX_JULIUS_PHASES = 2000
_MAX_JULIUS_KERNEL = 2_000_000  # float32 elements


class EncoderError(RuntimeError):
    """ffmpeg failed to write an output file; the message carries ffmpeg's own error output."""


# ---------------------------------------------------------------------------------------------
# Decoding


def load_audio(path: Path, name: str = "input_audio") -> tuple[torch.Tensor, int]:
    """Decode an audio file to float32 [C, T] (integer PCM scaled to [-1, 1)) at its native rate.

    Any container/codec in INPUT_FORMATS works, with or without a file extension (the content is
    probed). Returns (wav, sample_rate in Hz) with the file's own channel count. Raises
    InputError naming `name` for a file that is empty, not audio, damaged, shorter than
    MIN_INPUT_SECONDS, longer than MAX_INPUT_SECONDS, or outside the channel/sample-rate limits.
    Like media players, it skips the odd undecodable packet and plays a truncated file up to
    where it ends. Silent audio is valid and is returned as is.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{name}: {path} is not a readable file; upload an audio file ({INPUT_FORMATS}).")
    if path.stat().st_size == 0:
        raise InputError(f"{name} is an empty file (0 bytes); upload an audio file ({INPUT_FORMATS}).")
    try:
        container = av.open(str(path), mode="r", options=_OPEN_OPTIONS)
    except av.FFmpegError as exc:
        raise InputError(
            f"{name} is not a readable audio file ({_describe(exc)}); upload an audio file in one of "
            f"these formats: {INPUT_FORMATS}."
        ) from None
    with container:
        try:
            return _decode(container, name)
        except av.FFmpegError as exc:
            raise InputError(
                f"{name} is damaged: decoding failed ({_describe(exc)}); re-export or re-upload it ({INPUT_FORMATS})."
            ) from None


def _describe(exc: av.FFmpegError) -> str:
    """A decoder error in words a caller can act on (no file paths, no errno numbers)."""
    if isinstance(exc, av.error.EOFError):
        return "it ends unexpectedly, it may be truncated"
    if isinstance(exc, av.error.InvalidDataError):
        return "unrecognized or damaged data"
    if isinstance(exc, av.error.ArgumentError):  # EINVAL: e.g. a format outside INPUT_DEMUXERS
        return "not a supported audio format"
    return exc.strerror or type(exc).__name__


def _decode(container: av.container.InputContainer, name: str) -> tuple[torch.Tensor, int]:
    if not container.streams.audio:
        raise InputError(f"{name} contains no audio stream; upload an audio file ({INPUT_FORMATS}).")
    stream = container.streams.audio[0]
    declared = _declared_seconds(container, stream)
    if declared is not None and declared > MAX_INPUT_SECONDS:
        raise InputError(_too_long(name, declared))
    codec = stream.codec_context
    if codec.sample_rate and codec.layout.nb_channels:
        _check_format(name, codec.sample_rate, codec.layout.nb_channels)

    chunks: list[np.ndarray] = []
    rate = channels = length = packets = damaged = 0
    for packet in container.demux(stream):
        packets += packet.size > 0  # the last, empty packet only flushes the decoder
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            damaged += 1  # skipped, as ffmpeg and players do
            continue
        for frame in frames:
            frame_channels = frame.layout.nb_channels
            if not chunks:
                rate, channels = frame.sample_rate, frame_channels
                _check_format(name, rate, channels)
            elif (frame.sample_rate, frame_channels) != (rate, channels):
                raise InputError(
                    f"{name} changes from {rate} Hz x {channels} channels to {frame.sample_rate} Hz x "
                    f"{frame_channels} channels midway; re-encode it with one sample rate and channel count."
                )
            chunk = _frame_to_float(frame)
            if not np.isfinite(chunk).all():
                raise InputError(f"{name} contains NaN or infinite samples; audio samples must be finite numbers.")
            chunks.append(chunk)
            length += chunk.shape[1]
            if length > (MAX_INPUT_SECONDS + 1) * rate:  # the headers understated the length
                raise InputError(_too_long(name, None))
    if damaged > max(1, MAX_DAMAGED_FRACTION * packets):
        raise InputError(
            f"{name} is damaged: {damaged} of {packets} audio packets could not be decoded (at most "
            f"{MAX_DAMAGED_FRACTION:.0%} may be); re-export or re-upload it."
        )
    if length == 0:
        raise InputError(f"{name} contains no audio samples; upload an audio file ({INPUT_FORMATS}).")
    if length < MIN_INPUT_SECONDS * rate:
        raise InputError(f"{name} is {length / rate:.3f} s long; it must be at least {MIN_INPUT_SECONDS} s of audio.")
    return torch.from_numpy(np.concatenate(chunks, axis=1)), rate


def _declared_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """The duration the container's headers state, or None when they state none."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _too_long(name: str, seconds: float | None) -> str:
    length = f"is {seconds:.1f} s long" if seconds is not None else f"is longer than {MAX_INPUT_SECONDS} s"
    limit = f"{MAX_INPUT_SECONDS} s" + (f" ({MAX_INPUT_SECONDS / 60:g} minutes)" if MAX_INPUT_SECONDS >= 60 else "")
    return f"{name} {length}; at most {limit} of audio is allowed. Trim it first."


def _check_format(name: str, rate: int, channels: int) -> None:
    if not MIN_INPUT_SAMPLE_RATE <= rate <= MAX_INPUT_SAMPLE_RATE:
        raise InputError(
            f"{name} has a sample rate of {rate} Hz; it must be between {MIN_INPUT_SAMPLE_RATE} and "
            f"{MAX_INPUT_SAMPLE_RATE} Hz."
        )
    if not 1 <= channels <= MAX_INPUT_CHANNELS:
        raise InputError(f"{name} has {channels} channels; it must have 1 to {MAX_INPUT_CHANNELS}.")


_INT_SCALE = {"s16": 2.0**15, "s32": 2.0**31, "s64": 2.0**63}


def _frame_to_float(frame: av.AudioFrame) -> np.ndarray:
    """One decoded frame as float32 [C, T]: integers scaled to [-1, 1), floats kept as they are."""
    data = frame.to_ndarray()
    if not frame.format.is_planar:  # interleaved: [1, T * C]
        data = data.reshape(-1, frame.layout.nb_channels).T
    sample_format = frame.format.name.rstrip("p")  # s16p -> s16
    if sample_format == "u8":
        return (data.astype(np.float32) - 128.0) / 128.0
    if sample_format in _INT_SCALE:
        return (data.astype(np.float64) / _INT_SCALE[sample_format]).astype(np.float32)
    return data.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Conversion and levels


def convert(wav: torch.Tensor, from_rate: int, to_rate: int, channels: int) -> torch.Tensor:
    """Resample [C, T] audio from `from_rate` to `to_rate` (Hz) with `channels` channels out.

    Channels follow audiocraft's `convert_audio_channels`: same count = unchanged; to mono = mean
    of all channels; mono to N = the one channel repeated; C > N = the first N channels (for
    stereo from 5.1/7.1 in ffmpeg's order: front left and right; centre, LFE and surrounds are
    dropped); 1 < C < N raises ValueError. Resampling is audiocraft's (julius sinc); rate pairs
    whose ratio does not reduce to small integers go through ffmpeg's swresample instead.
    Returns [channels, floor(T * to_rate / from_rate)].
    """
    from_rate, to_rate = int(from_rate), int(to_rate)
    wav = convert_audio_channels(wav, channels)  # before resampling: fewer channels to filter
    if _julius_is_cheap(from_rate, to_rate):
        wav = convert_audio(wav, from_rate, to_rate, channels)
    else:
        wav = torch.cat([_swresample(channel, from_rate, to_rate) for channel in wav])
    return wav.contiguous()


def _julius_is_cheap(from_rate: int, to_rate: int) -> bool:
    gcd = math.gcd(from_rate, to_rate)
    old, new = from_rate // gcd, to_rate // gcd
    width = math.ceil(24 * old / (min(old, new) * 0.945))  # julius.ResampleFrac's defaults
    return new <= _MAX_JULIUS_PHASES and new * (2 * width + old) <= _MAX_JULIUS_KERNEL


def _swresample(channel: torch.Tensor, from_rate: int, to_rate: int) -> torch.Tensor:
    """ffmpeg's swresample on one channel [T] -> [1, T'], T' as julius would give it."""
    samples = np.ascontiguousarray(channel.detach().cpu().float().numpy()[None])
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate = from_rate
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=to_rate)
    chunks = [out.to_ndarray() for out in [*resampler.resample(frame), *resampler.resample(None)]]
    out = torch.from_numpy(np.concatenate(chunks, axis=1)) if chunks else torch.zeros(1, 0)
    length = channel.shape[-1] * to_rate // from_rate
    out = torch.nn.functional.pad(out[:, :length], (0, max(0, length - out.shape[-1])))
    return out.to(channel.device)


def normalize(wav: torch.Tensor, sample_rate: int, strategy: str) -> torch.Tensor:
    """Apply one of audiocraft's `audio_write` strategies with its default headrooms.

    wav: [C, T] float. peak: peak at -1 dBFS; clip: clamp to -1 dBFS, no gain; rms: RMS of the
    mono mix at -18 dB then clip to [-1, 1]; loudness: -14 LUFS (ITU-R BS.1770) then clip,
    left unscaled when the RMS is below 2e-3. Where audiocraft would divide by zero (silence for
    peak; a zero mono mix for rms) or cannot measure (loudness on less than one 400 ms
    BS.1770 block, or of audio that BS.1770 filters away entirely, such as a DC offset) the level
    is left as is and only the clipping step applies. Loudness is defined for at most
    MAX_LOUDNESS_CHANNELS channels: more raise InputError. Never modifies `wav` in place.
    Loudness filters through `musicgen.iir` where torchaudio lacks its compiled loop.
    """
    iir.install()
    wav = wav.clone()
    if strategy == "loudness" and wav.shape[0] > MAX_LOUDNESS_CHANNELS:
        raise InputError(
            f"normalization_strategy='loudness' measures at most {MAX_LOUDNESS_CHANNELS} channels (ITU-R BS.1770), "
            f"but this audio has {wav.shape[0]} (encode-decode keeps input_audio's channels); "
            f"use normalization_strategy 'peak', 'rms' or 'clip'."
        )
    unmeasurable = (
        (strategy == "peak" and not wav.abs().max() > 0)
        or (strategy == "rms" and not wav.mean(dim=0).pow(2).mean() > 0)
        or (strategy == "loudness" and not _loudness_is_measurable(wav, sample_rate))
    )
    if unmeasurable:
        return wav.clamp(-1, 1)
    return normalize_audio(wav, normalize=True, strategy=strategy, sample_rate=sample_rate)


def _loudness_is_measurable(wav: torch.Tensor, sample_rate: int) -> bool:
    """Whether audiocraft's loudness step can scale `wav` [C, T] to a finite level."""
    if wav.shape[-1] < 0.4 * sample_rate:  # shorter than one BS.1770 block
        return False
    if wav.pow(2).mean().sqrt() < LOUDNESS_ENERGY_FLOOR:  # audiocraft leaves it unscaled anyway
        return True
    return math.isfinite(torchaudio.functional.loudness(wav, sample_rate).item())


# ---------------------------------------------------------------------------------------------
# Writing and metadata


def write_output(
    wav: torch.Tensor,
    sample_rate: int,
    directory: Path,
    stem: str,
    output_format: str,
    metadata: dict[str, str],
) -> Path:
    """Write [C, T] float audio (in [-1, 1], clipped beyond) to `directory/stem.output_format`.

    'wav': 16-bit PCM WAV at `sample_rate`, metadata in the LIST/INFO comment (ICMT).
    'mp3': 320 kbps CBR MP3 (ffmpeg + LAME), metadata in the ID3v2.3 comment (COMM).
    The comment is `metadata_comment(metadata)`; `read_metadata` gives the dict back. Output is
    byte-identical for identical inputs. The file appears only once complete: on any failure
    nothing is left at the path (EncoderError carries ffmpeg's message).
    """
    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"output_format={output_format!r} is not allowed; choose one of: {', '.join(OUTPUT_FORMATS)}.")
    if wav.dim() != 2 or wav.shape[-1] == 0:
        raise ValueError(f"write_output needs non-empty [C, T] audio, got shape {tuple(wav.shape)}")
    if not torch.isfinite(wav).all():
        raise ValueError("write_output got NaN or infinite samples")
    comment = metadata_comment(metadata)
    pcm = _pcm16(wav)
    path = Path(directory) / f"{stem}.{output_format}"
    partial = path.with_name(f".{path.name}.partial")
    try:
        if output_format == "wav":
            _write_wav(pcm, sample_rate, partial, comment)
        else:
            _write_mp3(pcm, sample_rate, partial, comment)
        if partial.stat().st_size == 0:
            raise EncoderError(f"writing {path.name} produced an empty file")
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def _pcm16(wav: torch.Tensor) -> np.ndarray:
    """[C, T] float -> [T, C] int16, full scale 32768, clipped."""
    scaled = (wav.detach().cpu().double() * 2**15).round().clamp(-(2**15), 2**15 - 1)
    return np.ascontiguousarray(scaled.short().numpy().T)


def _write_wav(pcm: np.ndarray, sample_rate: int, path: Path, comment: str) -> None:
    with soundfile.SoundFile(
        path, "w", samplerate=sample_rate, channels=pcm.shape[1], subtype="PCM_16", format="WAV"
    ) as file:
        file.comment = comment
        file.write(pcm)


def _write_mp3(pcm: np.ndarray, sample_rate: int, path: Path, comment: str) -> None:
    if pcm.shape[1] > 2:
        raise InputError(
            f"output_format='mp3' holds mono or stereo audio, but this audio has {pcm.shape[1]} channels "
            f"(encode-decode keeps input_audio's channels); use output_format='wav'."
        )
    # bitexact: no encoder version strings, so the bytes depend only on the audio and the tags.
    command = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "s16le", "-ar", str(sample_rate), "-ac", str(pcm.shape[1]), "-i", "pipe:0",
        "-c:a", "libmp3lame", "-b:a", MP3_BITRATE, "-metadata", f"comment={comment}",
        "-id3v2_version", "3", "-fflags", "+bitexact", "-flags:a", "+bitexact",
        "-f", "mp3", str(path),
    ]  # fmt: skip
    try:
        subprocess.run(
            command, input=pcm.astype("<i2").tobytes(), capture_output=True, check=True, timeout=FFMPEG_TIMEOUT
        )
    except FileNotFoundError:
        raise EncoderError("ffmpeg is not installed or not on PATH; it is needed to write MP3 files") from None
    except subprocess.CalledProcessError as exc:
        message = exc.stderr.decode(errors="replace").strip() or "(no error output)"
        raise EncoderError(f"ffmpeg failed to encode MP3 (exit status {exc.returncode}): {message}") from None
    except subprocess.TimeoutExpired:
        raise EncoderError(f"ffmpeg did not finish encoding MP3 within {FFMPEG_TIMEOUT} s") from None


def metadata_comment(metadata: dict[str, str]) -> str:
    """`{'seed': '123', 'prompt': 'lo-fi beat'}` -> `musicgen seed=123 prompt='lo-fi beat'`.

    Keys are identifiers ([A-Za-z_][A-Za-z0-9_.-]*); values are strings, shell-quoted when they
    hold spaces, quotes or other special characters. Order is kept.
    """
    words = [METADATA_TAG]
    for key, value in metadata.items():
        if not isinstance(key, str) or not _METADATA_KEY.fullmatch(key):
            raise ValueError(f"metadata key {key!r} must match {_METADATA_KEY.pattern}")
        if not isinstance(value, str) or "\0" in value:
            raise TypeError(f"metadata[{key!r}] must be a string without NUL characters, got {value!r}")
        words.append(f"{key}={shlex.quote(value)}")
    return " ".join(words)


def parse_metadata_comment(comment: str) -> dict[str, str]:
    """The inverse of `metadata_comment`; {} for a comment that is not MusicGen's."""
    if comment.split(" ", 1)[0] != METADATA_TAG:
        return {}
    try:
        words = shlex.split(comment)
    except ValueError as exc:
        raise ValueError(f"malformed MusicGen metadata comment ({exc}): {comment!r}") from None
    metadata = {}
    for word in words[1:]:
        key, equals, value = word.partition("=")
        if not equals or not _METADATA_KEY.fullmatch(key):
            raise ValueError(f"malformed MusicGen metadata comment (word {word!r}): {comment!r}")
        metadata[key] = value
    return metadata


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata `write_output` stored in a WAV or MP3 file; {} when the file carries none.

    Raises InputError when the file cannot be opened as audio or its comment is malformed.
    """
    path = Path(path)
    try:
        with av.open(str(path), mode="r", options=_OPEN_OPTIONS) as container:
            comment = container.metadata.get("comment", "")
    except (av.FFmpegError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"{path} could not be opened as audio to read its metadata ({reason}).") from None
    try:
        return parse_metadata_comment(comment)
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
