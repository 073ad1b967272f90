"""Levels and formats: resampling and channel conversion, and audiocraft's four normalizations."""

from __future__ import annotations

import math
from collections.abc import Sequence

import av
import julius
import numpy as np
import torch
import torchaudio
from audiocraft.data.audio_utils import convert_audio, convert_audio_channels, normalize_audio

from musicgen.audio import loudness
from musicgen.audio.channels import bs1770_weights, default_layout
from musicgen.audio.loudness import LOUDNESS_ENERGY_FLOOR

# Largest julius (audiocraft's resampler) kernel we build: rates whose ratio does not reduce to
# small integers (44056 -> 32000 is 5507/4000) take seconds to gigabytes; those go through
# ffmpeg's swresample instead.
_MAX_JULIUS_PHASES = 2000
_MAX_JULIUS_KERNEL = 2_000_000  # float32 elements


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


def resample_in_pieces(wav: torch.Tensor, from_rate: int, to_rate: int, piece: int = 1 << 20) -> torch.Tensor:
    """convert()'s resampling of [C, T] in pieces of about `piece` input samples, each given the
    neighbouring samples its filter reaches: the same filter and the same edges as the whole
    signal at once (up to float rounding), in memory that does not grow with the length (the
    sinc convolution of a whole 20-minute channel takes gigabytes)."""
    from_rate, to_rate = int(from_rate), int(to_rate)
    if from_rate == to_rate:
        return wav
    if not _julius_is_cheap(from_rate, to_rate):
        return convert(wav, from_rate, to_rate, wav.shape[0])
    resampler = julius.ResampleFrac(from_rate, to_rate).to(wav)
    old, new, width = resampler.old_sr, resampler.new_sr, resampler._width
    length = wav.shape[-1]
    blocks = -(-(length + old) // old)  # the conv's output blocks over the padded signal (as julius pads)
    step = max(1, piece // old)  # blocks per piece
    out = []
    for first in range(0, blocks, step):
        last = min(blocks, first + step)
        # padded[p] = wav[clamp(p - width)]: replicate padding, as julius does at the true ends
        index = torch.arange(first * old - width, (last - 1) * old - width + 2 * width + old, device=wav.device)
        window = wav[:, index.clamp(0, length - 1)]
        ys = torch.nn.functional.conv1d(window[:, None], resampler.kernel, stride=old)
        out.append(ys.transpose(1, 2).reshape(wav.shape[0], -1))
    return torch.cat(out, dim=-1)[:, : length * new // old].contiguous()


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


def normalize(
    wav: torch.Tensor, sample_rate: int, strategy: str, channel_names: Sequence[str] | None = None
) -> torch.Tensor:
    """Apply one of audiocraft's `audio_write` strategies with its default headrooms.

    wav: [C, T] float. peak: peak at -1 dBFS; clip: clamp to -1 dBFS, no gain; rms: RMS of the
    mono mix at -18 dB then clip to [-1, 1]; loudness: -14 LUFS (ITU-R BS.1770) then clip,
    left unscaled when the RMS is below 2e-3. Where audiocraft would divide by zero (silence for
    peak; a zero mono mix for rms) or cannot measure (loudness on less than one 400 ms
    BS.1770 block, or of audio that BS.1770 filters away entirely, such as a DC offset) the level
    is left as is and only the clipping step applies.

    Loudness weighs each channel by its position, `channel_names` (ffmpeg's names, as
    DecodedAudio.channel_names; None: channels.default_layout(C), so mono is FC and stereo FL FR):
    LFE is not measured, surrounds weigh 1.41 (channels.bs1770_weights). Layouts that torchaudio's
    positional weights measure right (mono, stereo, 3.0, 5.0) go through audiocraft's own
    `normalize_audio`; the others (5.1, 7.1, quad, ...) through the same steps on the weighted
    measurement (loudness.normalize_loudness). A channel BS.1770 does not define raises
    ValueError (musicgen.request refuses those before any model runs). Never modifies `wav` in place.
    """
    if strategy == "loudness":
        names = default_layout(wav.shape[0]) if channel_names is None else tuple(channel_names)
        if len(names) != wav.shape[0]:
            raise ValueError(f"{len(names)} channel names ({' '.join(names)}) for {wav.shape[0]} channels")
        weights = bs1770_weights(names)
        if not loudness.torchaudio_weighs_like(weights):
            return loudness.normalize_loudness(wav, sample_rate, weights)
    wav = wav.clone()
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
    if wav.shape[-1] < loudness.BLOCK_SECONDS * sample_rate:  # shorter than one BS.1770 block
        return False
    if wav.pow(2).mean().sqrt() < LOUDNESS_ENERGY_FLOOR:  # audiocraft leaves it unscaled anyway
        return True
    return math.isfinite(torchaudio.functional.loudness(wav, sample_rate).item())
