"""ITU-R BS.1770-4 loudness weighted by channel position, and audiocraft's loudness step on it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchaudio.functional import highpass_biquad, treble_biquad

from musicgen.audio import iir

# The measurement exactly as torchaudio.functional.loudness makes it, channel weights aside.
BLOCK_SECONDS = 0.4  # gating block length
BLOCK_OVERLAP = 0.75  # of a block: blocks start every 100 ms
ABSOLUTE_GATE = -70.0  # LUFS: quieter blocks are not counted
RELATIVE_GATE = -10.0  # LU below the loudness of the blocks above the absolute gate
K_WEIGHTING_OFFSET = -0.691  # dB
# K-weighting, torchaudio's two biquads: a high shelf (+4 dB from 1500 Hz, Q 1/sqrt(2)) and a
# high-pass (38 Hz, Q 0.5).
SHELF_GAIN_DB, SHELF_HZ, SHELF_Q = 4.0, 1500.0, 1 / math.sqrt(2)
HIGHPASS_HZ, HIGHPASS_Q = 38.0, 0.5
# torchaudio's weights by position in the tensor (L, R, C, Ls, Rs), for at most 5 channels.
TORCHAUDIO_WEIGHTS = (1.0, 1.0, 1.0, 1.41, 1.41)
# audiocraft's `normalize_audio(strategy="loudness")` defaults.
LOUDNESS_HEADROOM_DB = 14  # target: -14 LUFS
LOUDNESS_ENERGY_FLOOR = 2e-3  # RMS (all channels) under which audiocraft's loudness step applies no gain

iir.install()  # once, here: every BS.1770 filter (ours, torchaudio's) goes through torchaudio's lfilter


def torchaudio_weighs_like(weights: Sequence[float]) -> bool:
    """Whether torchaudio's positional weights for len(weights) channels are `weights`."""
    return tuple(weights) == TORCHAUDIO_WEIGHTS[: len(weights)]


def integrated_loudness(wav: torch.Tensor, sample_rate: int, weights: Sequence[float]) -> torch.Tensor:
    """BS.1770-4 integrated loudness in LUFS (a 0-d tensor) of [C, T] audio, channel c weighted by weights[c].

    K-weighting, 400 ms blocks every 100 ms, gates at -70 LUFS and 10 LU below: the operations of
    torchaudio.functional.loudness, which this equals where `weights` are its positional ones.
    Channels of weight 0 (LFE) are left out before filtering. NaN when nothing can be measured:
    shorter than one block, no weighted channel, or no block above the gates (e.g. a DC offset).
    """
    if len(weights) != wav.shape[-2]:
        raise ValueError(f"{len(weights)} channel weights for {wav.shape[-2]} channels")
    gain = torch.tensor(weights, dtype=wav.dtype, device=wav.device)
    measured = gain > 0
    wav, gain = wav[..., measured, :], gain[measured]
    block = int(round(BLOCK_SECONDS * sample_rate))
    step = int(round(block * (1 - BLOCK_OVERLAP)))
    if wav.shape[-1] < block or not measured.any():
        return torch.tensor(math.nan, dtype=wav.dtype, device=wav.device)

    wav = treble_biquad(wav, sample_rate, SHELF_GAIN_DB, SHELF_HZ, SHELF_Q)
    wav = highpass_biquad(wav, sample_rate, HIGHPASS_HZ, HIGHPASS_Q)
    energy = torch.mean(torch.square(wav).unfold(-1, block, step), dim=-1)  # [C, blocks]
    block_loudness = K_WEIGHTING_OFFSET + 10 * torch.log10(torch.sum(gain.unsqueeze(-1) * energy, dim=-2))

    gated = (block_loudness > ABSOLUTE_GATE).unsqueeze(-2)
    relative_gate = _gated_loudness(energy, gated, gain) + RELATIVE_GATE
    gated = torch.logical_and(gated.squeeze(-2), block_loudness > relative_gate.unsqueeze(-1)).unsqueeze(-2)
    return _gated_loudness(energy, gated, gain)


def _gated_loudness(energy: torch.Tensor, gated: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Loudness of the mean energy of the `gated` blocks, per channel, weighted by `gain`."""
    mean = torch.sum(gated * energy, dim=-1) / torch.count_nonzero(gated, dim=-1)
    return K_WEIGHTING_OFFSET + 10 * torch.log10(torch.sum(gain * mean, dim=-1))


def normalize_loudness(wav: torch.Tensor, sample_rate: int, weights: Sequence[float]) -> torch.Tensor:
    """audiocraft's loudness normalization of [C, T] audio, measured with `weights` per channel.

    The steps of audiocraft's `normalize_audio(strategy="loudness")`: no gain when the RMS of all
    channels is under LOUDNESS_ENERGY_FLOOR, else one gain on every channel (LFE included) to
    -LOUDNESS_HEADROOM_DB LUFS; then clamped to [-1, 1]. Audio that cannot be measured
    (integrated_loudness is NaN) gets no gain either. Returns a new tensor.
    """
    if wav.pow(2).mean().sqrt().item() >= LOUDNESS_ENERGY_FLOOR:
        input_loudness_db = integrated_loudness(wav, sample_rate, weights).item()
        if math.isfinite(input_loudness_db):
            gain = 10.0 ** ((-LOUDNESS_HEADROOM_DB - input_loudness_db) / 20.0)
            wav = gain * wav
    return wav.clamp(-1, 1)
