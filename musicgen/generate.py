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
    """Text + the melody of input_audio, through audiocraft's own `generate_with_chroma`.

    The model's ChromaStemConditioner separates the stems with HT-Demucs, keeps vocals + other
    (drops drums and bass) and takes a 12-bin chroma; get_pretrained set `match_len_on_eval`, so
    the chroma is cut or repeated to the 30 s context, and past 30 s audiocraft tiles the melody
    over the windows. The melody is cut to `duration` + MAX_CONTEXT seconds first: nothing later
    can reach the output, and it bounds the stem separation of a long file.
    """
    melody, sample_rate = audio.load_audio(request.input_audio)
    melody = melody[..., : int((request.duration + MAX_CONTEXT) * sample_rate)]
    melody = audio.convert(melody, sample_rate, model.sample_rate, model.audio_channels)
    set_generation_params(model, request, request.duration)
    return model.generate_with_chroma([request.prompt], [melody], model.sample_rate, return_tokens=True)


def continuation(model: MusicGen, request: Request) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt window (re-decoded) followed by `duration` seconds of new audio.

    The window is cut to whole token frames, so the output is exactly that many frames plus
    duration * sample_rate samples. audiocraft's own steps (encode the prompt, generate with its
    extend mechanism past 30 s, decode) with one addition: a window that fills the whole context
    (exactly MAX_CONTEXT s) leaves the LM no room in its first window, which audiocraft asserts
    against; it is continued from its last MAX_CONTEXT - EXTEND_STRIDE seconds, exactly what
    audiocraft's extend loop does after a window that generated nothing. The steps are the ones
    `MusicGen.generate_continuation` calls (`_prepare_tokens_and_attributes`, `_generate_tokens`,
    `generate_audio`; audiocraft is pinned), so the result is bit for bit audiocraft's.
    """
    wav, sample_rate = audio.load_audio(request.input_audio)
    window = continuation_window(wav, sample_rate, request)
    window = audio.convert(window, sample_rate, model.sample_rate, model.audio_channels)
    hop = model.sample_rate // model.frame_rate  # samples per token frame
    frames = window.shape[-1] // hop
    attributes, prompt = model._prepare_tokens_and_attributes([request.prompt], window[None, :, : frames * hop])
    head = prompt[..., :0]  # prompt frames kept in the output but no longer in the LM's context
    if frames >= MAX_CONTEXT * model.frame_rate:
        head, prompt = prompt[..., : EXTEND_STRIDE * model.frame_rate], prompt[..., EXTEND_STRIDE * model.frame_rate :]
    new_frames = prompt.shape[-1] + request.duration * model.frame_rate
    # audiocraft counts frames as int(duration * frame_rate): half a frame more keeps it exact.
    set_generation_params(model, request, (new_frames + 0.5) / model.frame_rate)
    tokens = torch.cat([head, model._generate_tokens(attributes, prompt)], dim=-1)
    return model.generate_audio(tokens), tokens


def continuation_window(wav: torch.Tensor, sample_rate: int, request: Request) -> torch.Tensor:
    """input_audio [C, T] cut to [continuation_start, continuation_end) seconds, checked against the file."""
    length = wav.shape[-1] / sample_rate
    start = request.continuation_start
    end = length if request.continuation_end in (None, -1) else request.continuation_end
    named_end = "end of file" if request.continuation_end in (None, -1) else request.continuation_end
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
            f"the continuation window continuation_start={start} to continuation_end={named_end} "
            f"is {end - start:.2f} s long; it may be at most {MAX_CONTEXT} s (the model's context)."
        )
    if end - start < audio.MIN_INPUT_SECONDS:
        raise InputError(
            f"the continuation window continuation_start={start} to continuation_end={named_end} "
            f"is {end - start:.3f} s long; it must be at least {audio.MIN_INPUT_SECONDS} s of input_audio."
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

    The codec is mono: every channel of the input (mono, stereo, 5.1, ...) is encoded and decoded
    separately and the output keeps the input's channels in their order. Long files go through
    in CODEC_CHUNK-second pieces cross-faded over CODEC_OVERLAP seconds, so memory stays bounded.
    Returns [C, T]: the input's channels and length at the codec's rate.
    """
    codec = models.codec
    wav, sample_rate = audio.load_audio(path)
    wav = audio.convert(wav, sample_rate, codec.sample_rate, wav.shape[0])
    channels = wav[:, None, :].to(models.device)  # [C, 1, T]: channels as a batch of mono signals

    def roundtrip(chunk: torch.Tensor) -> torch.Tensor:
        codes, scale = codec.encode(chunk)
        assert scale is None, "MusicGen's EnCodec does not renormalize"
        if multi_band_diffusion:  # one channel at a time: MBD matches its EQ over the whole batch
            decoded = torch.cat([models.mbd.tokens_to_wav(channel[None]) for channel in codes])
        else:
            decoded = codec.decode(codes)
        return decoded[..., : chunk.shape[-1]]

    rate = codec.sample_rate
    return process_in_chunks(channels, roundtrip, CODEC_CHUNK * rate, CODEC_OVERLAP * rate)[:, 0, :]


def generate(request: Request, models: LoadedModels, seed: int) -> tuple[torch.Tensor, int]:
    """Run the request's mode; return (audio [C, T] float32 on CPU, sample rate in Hz)."""
    if request.multi_band_diffusion:
        models.mbd  # noqa: B018  (loads it on first use, before seeding: loading draws random numbers)
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
