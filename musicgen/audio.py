"""Audio I/O and levels: normalization strategies and writing output files."""

from __future__ import annotations

from pathlib import Path

import soundfile
import torch

from musicgen import offline  # noqa: F401  (before audiocraft)
from audiocraft.data.audio_utils import normalize_audio

SAMPLE_RATE = 32000  # Hz, MusicGen's output rate


def normalize(wav: torch.Tensor, sample_rate: int, strategy: str) -> torch.Tensor:
    """Apply one of audiocraft's `audio_write` strategies with its default headrooms.

    wav: [C, T] float. peak: peak at -1 dBFS; clip: clamp to -1 dBFS, no gain; rms: RMS at
    -18 dB then clip; loudness: -14 LUFS (ITU-R BS.1770) then clip.
    """
    return normalize_audio(wav, normalize=True, strategy=strategy, sample_rate=sample_rate)


def write_wav(wav: torch.Tensor, sample_rate: int, path: Path) -> Path:
    """Write [C, T] float audio as 16-bit PCM WAV."""
    soundfile.write(path, wav.detach().cpu().float().T.numpy(), sample_rate, subtype="PCM_16", format="WAV")
    return path
