"""Writing outputs: 16-bit WAV or 320 kbps MP3, byte-identical for identical audio, tagged with our metadata."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import av
import numpy as np
import soundfile
import torch

from musicgen import atomic_files
from musicgen.audio.read import OPEN_OPTIONS
from musicgen.errors import InputError
from musicgen.input_rules import MAX_MP3_CHANNELS, OUTPUT_FORMATS

MP3_BITRATE = "320k"  # audiocraft's own MP3 bitrate
FFMPEG_TIMEOUT = 600  # seconds; encoding a minute of audio takes well under one
METADATA_TAG = "musicgen"  # first word of the comment that write_output stores
_METADATA_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


class EncoderError(RuntimeError):
    """ffmpeg failed to write an output file; the message carries ffmpeg's own error output."""


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
        raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    if output_format == "mp3" and wav.shape[0] > MAX_MP3_CHANNELS:
        raise ValueError(f"mp3 holds at most {MAX_MP3_CHANNELS} channels, got {wav.shape[0]}")
    if wav.dim() != 2 or wav.shape[-1] == 0:
        raise ValueError(f"write_output needs non-empty [C, T] audio, got shape {tuple(wav.shape)}")
    if not torch.isfinite(wav).all():
        raise ValueError("write_output got NaN or infinite samples")
    comment = metadata_comment(metadata)
    pcm = _pcm16(wav)
    path = Path(directory) / f"{stem}.{output_format}"
    with atomic_files.atomic_path(path) as partial:
        if output_format == "wav":
            _write_wav(pcm, sample_rate, partial, comment)
        else:
            _write_mp3(pcm, sample_rate, partial, comment)
        if partial.stat().st_size == 0:
            raise EncoderError(f"writing {path.name} produced an empty file")
    return path


PCM_CHUNK = 1 << 20  # samples per channel converted at a time (the float64 steps stay small)


def _pcm16(wav: torch.Tensor) -> np.ndarray:
    """[C, T] float -> [T, C] int16, full scale 32768, clipped (in pieces: elementwise, so exact)."""
    wav = wav.detach().cpu()
    pcm = np.empty((wav.shape[-1], wav.shape[0]), np.int16)
    for start in range(0, wav.shape[-1], PCM_CHUNK):
        piece = wav[:, start : start + PCM_CHUNK].double()
        pcm[start : start + PCM_CHUNK] = (piece * 2**15).round().clamp(-(2**15), 2**15 - 1).short().numpy().T
    return pcm


def _write_wav(pcm: np.ndarray, sample_rate: int, path: Path, comment: str) -> None:
    with soundfile.SoundFile(
        path, "w", samplerate=sample_rate, channels=pcm.shape[1], subtype="PCM_16", format="WAV"
    ) as file:
        file.comment = comment
        file.write(pcm)


def _write_mp3(pcm: np.ndarray, sample_rate: int, path: Path, comment: str) -> None:
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
        with av.open(str(path), mode="r", options=OPEN_OPTIONS) as container:
            comment = container.metadata.get("comment", "")
    except (av.FFmpegError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"{path} could not be opened as audio to read its metadata ({reason}).") from None
    try:
        return parse_metadata_comment(comment)
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
