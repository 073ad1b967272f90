"""The generation modes as small functions over one shared pipeline: seed, tokens, decode.

Every generating mode returns audiocraft's own output, audio [1, C, T] and EnCodec tokens
[1, K, S] (K codebooks, S frames at the codec's frame rate); with multi_band_diffusion the
tokens are decoded again by MultiBand Diffusion instead.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from musicgen import audio

# isort: off
from musicgen import offline  # noqa: F401  (configures the hub cache before audiocraft loads)
from audiocraft.models import MusicGen

# isort: on
from musicgen.errors import InputError
from musicgen.models import LoadedModels
from musicgen.request import Request

MAX_CONTEXT = 30  # seconds the LM attends to; a continuation window may not be longer
EXTEND_STRIDE = 18  # seconds; past 30 s each new window re-uses the last 12 s as its prompt
CODEC_CHUNK = 30  # seconds of audio per EnCodec pass in encode-decode (bounds the memory)
CODEC_OVERLAP = 1  # seconds shared by neighbouring chunks, cross-faded


def seed_everything(seed: int) -> None:
    """Seed every generator sampling may touch, so the same seed gives the same tokens."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def set_generation_params(model: MusicGen, request: Request, duration: float) -> None:
    """Sampling settings exactly as a user of audiocraft passes them; temperature 0 is greedy."""
    model.set_generation_params(
        use_sampling=request.temperature > 0,
        top_k=request.top_k,
        top_p=request.top_p,
        temperature=request.temperature,
        duration=duration,
        cfg_coef=request.classifier_free_guidance,
        extend_stride=EXTEND_STRIDE,
    )


def text_to_music(model: MusicGen, request: Request) -> tuple[torch.Tensor, torch.Tensor]:
    """Text only: `duration` seconds."""
    set_generation_params(model, request, request.duration)
    return model.generate([request.prompt], return_tokens=True)


def melody_to_music(model: MusicGen, request: Request) -> tuple[torch.Tensor, torch.Tensor]:
    """Text + the melody (chroma of the stems without drums and bass) of input_audio."""
    melody, sample_rate = audio.load_audio(request.input_audio)
    set_generation_params(model, request, request.duration)
    return model.generate_with_chroma([request.prompt], [melody], sample_rate, return_tokens=True)


def continuation(model: MusicGen, request: Request) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt window (re-decoded) followed by `duration` seconds of new audio."""
    wav, sample_rate = audio.load_audio(request.input_audio)
    window = continuation_window(wav, sample_rate, request)
    window = audio.convert(window, sample_rate, model.sample_rate, model.audio_channels)
    hop = model.sample_rate // model.frame_rate  # samples per token frame
    frames = window.shape[-1] // hop
    window = window[..., : frames * hop]  # whole frames, so the output length is exact
    total_frames = frames + request.duration * model.frame_rate
    # audiocraft counts frames as int(duration * frame_rate): half a frame more keeps it exact.
    set_generation_params(model, request, (total_frames + 0.5) / model.frame_rate)
    return model.generate_continuation(window[None], model.sample_rate, [request.prompt], return_tokens=True)


def continuation_window(wav: torch.Tensor, sample_rate: int, request: Request) -> torch.Tensor:
    """input_audio [C, T] cut to [continuation_start, continuation_end) seconds, checked against the file."""
    length = wav.shape[-1] / sample_rate
    start = request.continuation_start
    end = length if request.continuation_end in (None, -1) else request.continuation_end
    if start >= length:
        raise InputError(
            f"continuation_start={start} is past the end of input_audio ({length:.2f} s long); "
            f"it must be less than {length:.2f}."
        )
    if end > length:
        raise InputError(
            f"continuation_end={request.continuation_end} is past the end of input_audio ({length:.2f} s long); "
            f"use a value up to {math.floor(length)}, or -1 for the end of the file."
        )
    if end - start > MAX_CONTEXT:
        raise InputError(
            f"the continuation window continuation_start={start} to continuation_end="
            f"{request.continuation_end if request.continuation_end not in (None, -1) else 'end of file'} "
            f"is {end - start:.2f} s long; it may be at most {MAX_CONTEXT} s (the model's context)."
        )
    return wav[..., int(start * sample_rate) : int(end * sample_rate)]


GENERATING_MODES: dict[str, Callable[[MusicGen, Request], tuple[torch.Tensor, torch.Tensor]]] = {
    "text": text_to_music,
    "melody": melody_to_music,
    "continuation": continuation,
}


def process_in_chunks(
    signal: torch.Tensor, process: Callable[[torch.Tensor], torch.Tensor], chunk: int, overlap: int
) -> torch.Tensor:
    """Apply a length-preserving `process` to [..., T] in pieces of `chunk` samples.

    Neighbouring pieces share `overlap` samples, cross-faded linearly, so no seam is audible.
    """
    length = signal.shape[-1]
    if length <= chunk:
        return process(signal)
    out = torch.zeros_like(signal)
    fade_in = torch.linspace(0.0, 1.0, overlap, device=signal.device)
    start = 0
    while True:
        piece = process(signal[..., start : start + chunk])
        if start == 0:
            out[..., : piece.shape[-1]] = piece
        else:
            out[..., start : start + overlap] *= 1 - fade_in
            out[..., start : start + overlap] += piece[..., :overlap] * fade_in
            out[..., start + overlap : start + piece.shape[-1]] = piece[..., overlap:]
        if start + chunk >= length:
            return out
        start += chunk - overlap


def encode_decode(models: LoadedModels, path: Path, multi_band_diffusion: bool) -> torch.Tensor:
    """input_audio at the codec's rate through EnCodec and back, each channel on its own.

    Long files go through in CODEC_CHUNK-second pieces cross-faded over CODEC_OVERLAP seconds,
    so memory stays bounded. Returns [C, T]: the input's channels and length at the codec's rate.
    """
    codec = models.codec
    wav, sample_rate = audio.load_audio(path)
    wav = audio.convert(wav, sample_rate, codec.sample_rate, wav.shape[0])
    channels = wav[:, None, :].to(models.device)  # [C, 1, T]: channels as a batch of mono signals

    def roundtrip(chunk: torch.Tensor) -> torch.Tensor:
        codes, scale = codec.encode(chunk)
        assert scale is None, "MusicGen's EnCodec does not renormalize"
        decoded = models.mbd.tokens_to_wav(codes) if multi_band_diffusion else codec.decode(codes)
        return decoded[..., : chunk.shape[-1]]

    rate = codec.sample_rate
    return process_in_chunks(channels, roundtrip, CODEC_CHUNK * rate, CODEC_OVERLAP * rate)[:, 0, :]


def generate(request: Request, models: LoadedModels, seed: int) -> tuple[torch.Tensor, int]:
    """Run the request's mode; return (audio [C, T] float32 on CPU, sample rate in Hz)."""
    seed_everything(seed)
    with torch.inference_mode():
        if request.mode == "encode-decode":
            wav = encode_decode(models, request.input_audio, request.multi_band_diffusion)
            return wav.float().cpu(), models.codec.sample_rate
        model = models.generator(request.model_version)
        if request.top_k > model.lm.card:
            raise InputError(f"top_k={request.top_k} is out of range; it must be between 0 and {model.lm.card}.")
        wav, tokens = GENERATING_MODES[request.mode](model, request)
        if request.multi_band_diffusion:  # the prompt's tokens too, for a continuation
            wav = models.mbd.tokens_to_wav(tokens)
    return wav[0].float().cpu(), model.sample_rate
