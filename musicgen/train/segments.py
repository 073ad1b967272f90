"""Dataset files -> training segments: decoded, converted, optionally without vocals, cut into 30 s,
each tokenized once with the model's EnCodec and (melody models) its chroma computed once.

Only tokens, chroma and captions are kept: a dataset's audio is never held whole in memory, one
file is decoded at a time. A file the decoder refuses (not audio, damaged, empty, too short) is
skipped with a warning naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from audiocraft.data.audio_utils import convert_audio_channels

from musicgen.audio import levels
from musicgen.audio.read import load_audio
from musicgen.errors import InputError
from musicgen.train.dataset import DatasetFile, Skipped
from musicgen.train.model import TrainingModel

log = logging.getLogger(__name__)

SEGMENT_SECONDS = 30  # the LMs' training segment (their context)
MIN_SEGMENT_SECONDS = 1  # a file's last, shorter piece is kept from this length


@dataclass(frozen=True)
class Segment:
    """One training example."""

    codes: torch.Tensor  # [K, frames] int64: EnCodec's tokens of the segment
    caption: str | None  # its text condition; None: trained without one
    chroma: torch.Tensor | None  # [chroma frames, bins]: the melody condition, from the segment itself
    samples: int  # its length at the model's rate
    source: str  # the file it comes from, as the dataset names it


@dataclass
class SegmentStats:
    """What went into training, for the log and the checkpoint's record."""

    files: int = 0
    segments: int = 0
    seconds: float = 0.0


def make_segments(
    files: Iterable[DatasetFile], model: TrainingModel, drop_vocals: bool, skipped: Skipped
) -> tuple[list[Segment], SegmentStats]:
    """Every segment of every usable file, in dataset order."""
    segments, stats = [], SegmentStats()
    for file in files:
        try:
            audio = load_audio(file.path, name=f"dataset file {file.name!r}")
        except InputError as error:
            skipped.add(file.name, str(error))
            continue
        # in pieces: the sinc filter and HT-Demucs over a whole long file take gigabytes
        wav = convert_audio_channels(audio.wav, model.channels)
        wav = levels.resample_in_pieces(wav, audio.sample_rate, model.sample_rate)
        file_seconds = audio.seconds
        del audio
        pieces = _cut(wav, model.sample_rate)
        if not pieces:
            skipped.add(
                file.name,
                f"{file_seconds:.2f} s long; a segment must be at least {MIN_SEGMENT_SECONDS} s",
            )
            continue
        for piece in pieces:
            if drop_vocals:  # each segment on its own
                piece = model.without_vocals(piece)
            segments.append(Segment(model.tokens(piece), file.caption, model.chroma(piece), piece.shape[-1], file.name))
        stats.files += 1
        stats.segments += len(pieces)
        stats.seconds += wav.shape[-1] / model.sample_rate
        log.info("%s: %d segment(s), %.1f s, caption: %s", file.name, len(pieces), file_seconds, _quoted(file.caption))
    return segments, stats


def _cut(wav: torch.Tensor, sample_rate: int) -> list[torch.Tensor]:
    """[C, T] -> consecutive SEGMENT_SECONDS pieces; a last one shorter than MIN_SEGMENT_SECONDS is dropped."""
    size, shortest = SEGMENT_SECONDS * sample_rate, MIN_SEGMENT_SECONDS * sample_rate
    return [
        wav[:, start : start + size] for start in range(0, wav.shape[-1], size) if wav.shape[-1] - start >= shortest
    ]


def _quoted(caption: str | None, limit: int = 60) -> str:
    if caption is None:
        return "none"
    return repr(caption if len(caption) <= limit else caption[: limit - 3] + "...")
