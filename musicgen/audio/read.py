"""Reading an input file: any format ffmpeg reads (whitelisted demuxers), to float32 [C, T] at its own rate."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from musicgen.audio.channels import default_layout, with_default_positions
from musicgen.errors import InputError
from musicgen.input_rules import MIN_INPUT_SECONDS

MAX_INPUT_SECONDS = 20 * 60  # 20 minutes; checked from the container metadata before decoding
MAX_INPUT_CHANNELS = 8  # 7.1 surround; more is refused (memory grows with channels)
MIN_INPUT_SAMPLE_RATE = 4000  # Hz
MAX_INPUT_SAMPLE_RATE = 192000  # Hz
# The decoded samples a request keeps (float32, all the file's channels, at its own rate): the
# worker's memory grows with them, so they are bounded before decoding (from the headers) and
# while decoding (headers may understate). 320 MB: 13.9 minutes of stereo at 48 kHz (encode-decode
# reads the whole file), any continuation window, a melody of up to 8 channels at 96 kHz. With it
# the worker's peak stays under 1.5 GB over idle (docs/memory.md, "Large inputs").
MAX_DECODED_BYTES = 320 * 10**6
MAX_DAMAGED_FRACTION = 0.05  # undecodable packets skipped (more than one, and more than this, is refused)
INPUT_FORMATS = "WAV, MP3, FLAC, OGG (Vorbis or Opus), M4A/AAC, AIFF, WebM/Matroska audio"
# ffmpeg demuxers allowed to open an input. A whitelist, because some demuxers (hls, concat,
# image2, ...) open further files or URLs named inside the upload.
INPUT_DEMUXERS = "wav,w64,mp3,flac,ogg,mov,aac,aiff,matroska,caf,au,wv"
OPEN_OPTIONS = {"format_whitelist": INPUT_DEMUXERS, "protocol_whitelist": "file"}


@dataclass(frozen=True)
class Span:
    """The part of a file a request uses, in seconds from its start (end None: to the end of the
    file). Sample i is kept when int(start * rate) <= i < int(end * rate), as the modes slice."""

    start: float = 0.0
    end: float | None = None

    def samples(self, rate: int) -> tuple[int, int | None]:
        return int(self.start * rate), None if self.end is None else int(self.end * rate)

    def describe(self) -> str:
        if self.start == 0 and self.end is None:
            return "the whole file"
        return f"{self.start:g} s to {'the end' if self.end is None else f'{self.end:g} s'}"


WHOLE_FILE = Span()


@dataclass(frozen=True, eq=False)
class DecodedAudio:
    """A decoded file, or the part of it a request uses: float32 samples [C, T], their rate in Hz
    and the channels' positions.

    Unpacks as `wav, sample_rate`. channel_names: ffmpeg's name for each channel (5.1: FL FR FC
    LFE BL BR); a stream that names no positions (a plain multichannel WAV) gets the layout ffmpeg
    assumes for its channel count, channels.default_layout(C), and so does a DecodedAudio made
    without names. `offset`: the file's sample at wav[:, 0]; `file_samples`: the file's length
    (None: wav is the whole file).
    """

    wav: torch.Tensor
    sample_rate: int
    channel_names: tuple[str, ...] = ()
    offset: int = 0
    file_samples: int | None = None

    def __post_init__(self) -> None:
        if not self.channel_names:
            object.__setattr__(self, "channel_names", default_layout(self.channels))
        if self.file_samples is None:
            object.__setattr__(self, "file_samples", self.offset + self.wav.shape[-1])
        assert len(self.channel_names) == self.channels, (self.channel_names, self.wav.shape)

    def __iter__(self) -> Iterator[torch.Tensor | int]:
        """`wav, sample_rate = decoded`."""
        return iter((self.wav, self.sample_rate))

    @property
    def channels(self) -> int:
        return self.wav.shape[0]

    @property
    def seconds(self) -> float:
        """The whole file's length (not only the part kept)."""
        return self.file_samples / self.sample_rate

    def between(self, start: float, end: float) -> torch.Tensor:
        """The file's samples [int(start * rate), int(end * rate)), from the part kept (which must
        hold them: ValueError otherwise)."""
        first, last = int(start * self.sample_rate), min(int(end * self.sample_rate), self.file_samples)
        kept_end = self.offset + self.wav.shape[-1]
        if first < self.offset or (last > kept_end and first < last):
            raise ValueError(f"samples {first}-{last} asked for, {self.offset}-{kept_end} kept")
        return self.wav[..., first - self.offset : max(first, last) - self.offset]


def load_audio(
    path: Path, name: str = "input_audio", span: Span = WHOLE_FILE, max_bytes: int = MAX_DECODED_BYTES
) -> DecodedAudio:
    """Decode an audio file to float32 [C, T] (integer PCM scaled to [-1, 1)) at its native rate,
    keeping only the samples of `span` (the whole file is still read: its length is checked).

    The part kept may hold at most `max_bytes` as float32 (all the file's channels): checked from
    the headers before decoding, and again while decoding; beyond it, an InputError says how large
    it would be and what is allowed.

    Any container/codec in INPUT_FORMATS works, with or without a file extension (the content is
    probed). Returns (wav, sample_rate in Hz) with the file's own channel count, and the channels'
    positions as the first decoded frame names them (DecodedAudio.channel_names). Raises
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
        container = av.open(str(path), mode="r", options=OPEN_OPTIONS)
    except av.FFmpegError as exc:
        raise InputError(
            f"{name} is not a readable audio file ({_describe(exc)}); upload an audio file in one of "
            f"these formats: {INPUT_FORMATS}."
        ) from None
    with container:
        try:
            return _decode(container, name, span, max_bytes)
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


def _decode(container: av.container.InputContainer, name: str, span: Span, max_bytes: int) -> DecodedAudio:
    if not container.streams.audio:
        raise InputError(f"{name} contains no audio stream; upload an audio file ({INPUT_FORMATS}).")
    stream = container.streams.audio[0]
    codec = stream.codec_context
    if codec is None:  # ffmpeg found the stream but no decoder for it (e.g. a WAV of 0 bits per sample)
        raise InputError(
            f"{name} has an audio stream that cannot be decoded (no decoder for its format); upload an audio file "
            f"({INPUT_FORMATS})."
        )
    declared = _declared_seconds(container, stream)
    if declared is not None and declared > MAX_INPUT_SECONDS:
        raise InputError(_too_long(name, declared))
    if codec.sample_rate and codec.layout.nb_channels:
        _check_format(name, codec.sample_rate, codec.layout.nb_channels)
        if declared is not None:  # the bound, from the headers: before anything is decoded
            kept = max(0.0, min(declared, span.end if span.end is not None else declared) - span.start)
            _check_size(name, span, kept, codec.layout.nb_channels, codec.sample_rate, max_bytes)

    collected: _Collected | None = None
    names: tuple[str, ...] = ()
    rate = channels = length = packets = damaged = first = 0
    last: int | None = None
    for packet in container.demux(stream):
        packets += packet.size > 0  # the last, empty packet only flushes the decoder
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            damaged += 1  # skipped, as ffmpeg and players do
            continue
        for frame in frames:
            frame_channels = frame.layout.nb_channels
            if not rate:  # the first frame
                rate, channels = frame.sample_rate, frame_channels
                _check_format(name, rate, channels)
                names = with_default_positions(channel.name for channel in frame.layout.channels)
                first, last = span.samples(rate)
                stated = None if declared is None else int(declared * rate)
                expected = 0 if stated is None else max(0, (stated if last is None else min(stated, last)) - first)
                collected = _Collected(channels, min(expected, max_bytes // (4 * channels)))
            elif (frame.sample_rate, frame_channels) != (rate, channels):
                raise InputError(
                    f"{name} changes from {rate} Hz x {channels} channels to {frame.sample_rate} Hz x "
                    f"{frame_channels} channels midway; re-encode it with one sample rate and channel count."
                )
            chunk = _frame_to_float(frame)
            if not np.isfinite(chunk).all():
                raise InputError(f"{name} contains NaN or infinite samples; audio samples must be finite numbers.")
            wanted = chunk[:, max(0, first - length) : None if last is None else max(0, last - length)]
            if wanted.shape[1]:
                collected.add(wanted)
                if collected.samples * channels * 4 > max_bytes:  # the headers understated the length
                    _check_size(name, span, None, channels, rate, max_bytes)
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
    wav = collected.array()
    del collected
    return DecodedAudio(torch.from_numpy(wav), rate, names, offset=min(first, length), file_samples=length)


class _Collected:
    """The samples kept, written into one array of the length the headers state (so a file whose
    headers are right is never held twice), extended past it when they understated it."""

    def __init__(self, channels: int, expected: int):
        self.buffer = np.empty((channels, expected), np.float32)  # pages become resident as they are written
        self.samples = 0
        self.beyond: list[np.ndarray] = []

    def add(self, chunk: np.ndarray) -> None:
        room = min(self.buffer.shape[1] - self.samples, chunk.shape[1]) if not self.beyond else 0
        self.buffer[:, self.samples : self.samples + room] = chunk[:, :room]
        if room < chunk.shape[1]:
            self.beyond.append(chunk[:, room:])
        self.samples += chunk.shape[1]

    def array(self) -> np.ndarray:
        if self.beyond:
            return np.concatenate([self.buffer, *self.beyond], axis=1)
        if self.samples == self.buffer.shape[1]:
            return self.buffer
        return np.ascontiguousarray(self.buffer[:, : self.samples])  # the headers overstated the length


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


def _check_size(name: str, span: Span, seconds: float | None, channels: int, rate: int, max_bytes: int) -> None:
    """InputError when `seconds` of `span` (None: more than allowed, found while decoding) at
    `channels` x `rate` would decode to more than `max_bytes` of float32."""
    size = None if seconds is None else seconds * channels * rate * 4
    if size is not None and size <= max_bytes:
        return
    amount = f"more than {max_bytes / 1e9:g} GB" if size is None else f"{size / 1e9:.2f} GB ({seconds:.1f} s)"
    raise InputError(
        f"{name}: the part this request uses ({span.describe()}) would decode to {amount}, as 32-bit samples of "
        f"all its {channels} channel(s) at {rate} Hz; at most {max_bytes / 1e9:g} GB is decoded per request "
        f"({max_bytes / (4 * 2 * 48000 * 60):.1f} minutes of stereo at 48 kHz). Send fewer channels, a lower "
        f"sample rate, or a shorter file."
    )


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
