"""The modes (text, melody, continuation, encode-decode): one signature, dispatched from MODES.

generate() asks the models' one loader for the request's model once (LoadedModels.get: resident,
or loaded now with its token loop chosen and checked), then hands the mode one Generation: the
request, its decoded input_audio (or None), the served model, the models (for EnCodec and
MultiBand Diffusion) and the prediction's draws. A mode returns audio [C, T] at the codec's rate
(two channels for a stereo model: audiocraft's stereo wrapper encodes and decodes left and right
over the mono EnCodec, interleaving their codebooks). The generating modes prepare the conditions
and prompt with audiocraft's own steps, take the tokens from the model's token loop
(musicgen.tokens: ours, token-exact with audiocraft's on the CPU, or audiocraft's own) and decode
them with EnCodec, or with MultiBand Diffusion when asked.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from audiocraft.data.audio_utils import convert_audio
from audiocraft.models import MusicGen
from audiocraft.models.encodec import InterleaveStereoCompressionModel

from musicgen.audio import levels
from musicgen.audio.read import WHOLE_FILE, DecodedAudio, Span
from musicgen.input_rules import MAX_CONTEXT, MAX_SEED
from musicgen.lora.adapter import Adapter
from musicgen.models.load import LoadedModels, Served
from musicgen.request import Request, continuation_bounds
from musicgen.streaming.chunks import Stream
from musicgen.tokens.adapters import Adapted
from musicgen.tokens.batching import Draws
from musicgen.tokens.progress import timed
from musicgen.versions import ENCODE_DECODE

EXTEND_STRIDE = 18  # seconds; past 30 s each new window re-uses the last 12 s as its prompt
CODEC_CHUNK = 10  # seconds of one channel per EnCodec pass in encode-decode (bounds the memory)
CODEC_OVERLAP = 1  # seconds shared by neighbouring chunks, cross-faded


def draw_seed() -> int:
    """A random seed for callers who gave None or -1; it is logged (and recorded) so they can reproduce."""
    return random.SystemRandom().randint(0, MAX_SEED)


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


@dataclass(frozen=True)
class Generation:
    """One prediction's model work, as a mode gets it."""

    request: Request  # validated
    input_audio: DecodedAudio | None  # decoded (only the part the mode reads), or None
    served: Served | None  # the request's model and its token loop (None for encode-decode)
    models: LoadedModels  # EnCodec and MultiBand Diffusion, shared by every model
    draws: Draws | None = None  # the prediction's own generator when its windows decode in a batch
    stream: Stream | None = None  # a streaming prediction's chunks, written as the tokens arrive
    adapted: Adapted | None = None  # the LM's low-rank adapter at the request's scale (musicgen.lora)

    @property
    def model(self) -> MusicGen:
        return self.served.model


def _audio(work: Generation, attributes, prompt: torch.Tensor | None, head=None) -> torch.Tensor:
    """Tokens from the model's token loop (musicgen.tokens: ours, or audiocraft's), then audio
    [C, T]: EnCodec's decode, or MultiBand Diffusion's when asked. `head`: prompt frames that stay
    in the output without being in the LM's context (a continuation's first 18 s of a full window)."""
    request, stream = work.request, work.stream
    tap = None if stream is None else stream.begin(work.model, head, prompt)
    try:
        negative, draws, adapted = request.negative_prompt, work.draws, work.adapted
        tokens = work.served.loop.tokens(attributes, prompt, negative, draws=draws, tap=tap, adapted=adapted)
        if head is not None:
            tokens = torch.cat([head, tokens], dim=-1)
        if stream is not None:
            stream.end(tokens)  # the last chunks: the previews end where the piece does
    finally:
        if stream is not None:
            stream.close()  # stopped (a cancel, an error) before the prediction's folder goes
    with timed("codec"):
        if request.multi_band_diffusion:  # the prompt's tokens too, for a continuation
            return diffusion_audio(work.models, work.model, tokens)
        return work.model.generate_audio(tokens)[0]


def diffusion_audio(models: LoadedModels, model: MusicGen, tokens: torch.Tensor) -> torch.Tensor:
    """MultiBand Diffusion's decode of `tokens` [1, K, T] as audio [C, T]. MBD is trained on the
    mono EnCodec's tokens: a stereo model's interleaved codebooks are split into the left and
    right streams (audiocraft's own get_left_right_codes), each decoded on its own, and the two
    channels put back together. Each channel gets its own re-EQ against EnCodec's decode of it
    (audiocraft's demo app batches the two instead, sharing one EQ over both channels)."""
    codec = model.compression_model
    if isinstance(codec, InterleaveStereoCompressionModel):
        left, right = codec.get_left_right_codes(tokens)
        return torch.cat([models.mbd.tokens_to_wav(left)[0], models.mbd.tokens_to_wav(right)[0]])
    return models.mbd.tokens_to_wav(tokens)[0]


def text_to_music(work: Generation) -> torch.Tensor:
    """Text only: `duration` seconds (the steps of audiocraft's `MusicGen.generate`)."""
    model, request = work.model, work.request
    set_generation_params(model, request, request.duration)
    attributes, prompt = model._prepare_tokens_and_attributes([request.prompt], None)
    return _audio(work, attributes, prompt)


def melody_to_music(work: Generation) -> torch.Tensor:
    """Text + the melody of input_audio: the steps of audiocraft's own `generate_with_chroma`.

    The model's ChromaStemConditioner separates the stems with HT-Demucs, keeps vocals + other
    (drops drums and bass) and takes a 12-bin chroma; get_pretrained set `match_len_on_eval`, so
    the chroma is cut or repeated to the 30 s context, and past 30 s the melody is tiled over the
    windows. The melody is cut to `duration` + MAX_CONTEXT seconds first: nothing later can reach
    the output, and it bounds the stem separation of a long file.
    """
    model, request, input_audio = work.model, work.request, work.input_audio
    sample_rate = input_audio.sample_rate
    melody = input_audio.between(*_melody_seconds(request))
    melody = levels.convert(melody, sample_rate, model.sample_rate, model.audio_channels)
    set_generation_params(model, request, request.duration)
    # generate_with_chroma's own conversion (a no-op at the model's rate and channels)
    melody = convert_audio(melody, model.sample_rate, model.sample_rate, model.audio_channels)
    attributes, prompt = model._prepare_tokens_and_attributes([request.prompt], None, melody_wavs=[melody])
    return _audio(work, attributes, prompt)


def continuation(work: Generation) -> torch.Tensor:
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
    model, request, input_audio = work.model, work.request, work.input_audio
    sample_rate = input_audio.sample_rate
    window = input_audio.between(*continuation_bounds(request, input_audio.seconds))
    window = levels.convert(window, sample_rate, model.sample_rate, model.audio_channels)
    frame_rate = round(model.frame_rate)  # 50 Hz (a float for the stereo and Hugging Face codecs)
    hop = model.sample_rate // frame_rate  # samples per token frame
    frames = window.shape[-1] // hop
    attributes, prompt = model._prepare_tokens_and_attributes([request.prompt], window[None, :, : frames * hop])
    head = prompt[..., :0]  # prompt frames kept in the output but no longer in the LM's context
    if frames >= MAX_CONTEXT * frame_rate:
        head, prompt = prompt[..., : EXTEND_STRIDE * frame_rate], prompt[..., EXTEND_STRIDE * frame_rate :]
    new_frames = prompt.shape[-1] + request.duration * frame_rate
    # audiocraft counts frames as int(duration * frame_rate): half a frame more keeps it exact.
    set_generation_params(model, request, (new_frames + 0.5) / frame_rate)
    return _audio(work, attributes, prompt, head)


def _melody_seconds(request: Request) -> tuple[float, float]:
    return 0, request.duration + MAX_CONTEXT


def input_span(request: Request) -> Span:
    """The part of input_audio the request's mode reads: the melody's first duration + MAX_CONTEXT
    seconds, the continuation window (at most MAX_CONTEXT seconds: a longer one is refused), or
    the whole file for encode-decode. Only that part is kept when decoding."""
    if request.mode == "melody":
        return Span(*_melody_seconds(request))
    if request.mode == "continuation":
        start = request.continuation_start
        end = start + MAX_CONTEXT
        if request.continuation_end not in (None, -1):
            end = min(end, request.continuation_end)
        return Span(start, end)
    return WHOLE_FILE


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


def encode_decode(work: Generation) -> torch.Tensor:
    """input_audio at the codec's rate through EnCodec and back, each channel on its own.

    The codec is mono: every channel of the input (mono, stereo, 5.1, ...) is encoded and decoded
    separately (resampled, encoded and decoded one channel at a time) and the output keeps the
    input's channels in their order. Long files go through in CODEC_CHUNK-second pieces
    cross-faded over CODEC_OVERLAP seconds, so memory stays bounded.
    Returns [C, T]: the input's channels and length at the codec's rate.
    """
    models, request = work.models, work.request
    codec = models.codec
    wav, sample_rate = work.input_audio
    rate = codec.sample_rate

    def roundtrip(chunk: torch.Tensor) -> torch.Tensor:
        with timed("codec"):
            codes, scale = codec.encode(chunk)
            assert scale is None, "MusicGen's EnCodec does not renormalize"
            decoded = models.mbd.tokens_to_wav(codes) if request.multi_band_diffusion else codec.decode(codes)
            return decoded[..., : chunk.shape[-1]]

    out = None
    for index in range(wav.shape[0]):  # one channel at a time: the codec's activations grow with the batch
        channel = levels.resample_in_pieces(wav[index : index + 1], sample_rate, rate).to(models.device)
        coded = process_in_chunks(channel[None], roundtrip, CODEC_CHUNK * rate, CODEC_OVERLAP * rate)[0, 0]
        if out is None:
            out = torch.empty(wav.shape[0], coded.shape[-1], device=coded.device)
        out[index] = coded
    return out


Mode = Callable[[Generation], torch.Tensor]
MODES: dict[str, Mode] = {
    "text": text_to_music,
    "melody": melody_to_music,
    "continuation": continuation,
    ENCODE_DECODE: encode_decode,
}


def generate(
    request: Request,
    models: LoadedModels,
    seed: int,
    input_audio: DecodedAudio | None,
    stream: Stream | None = None,
    adapter: Adapter | None = None,
) -> tuple[torch.Tensor, int]:
    """Run the request's mode (validated; input_audio decoded, or None when the request has none);
    return (audio [C, T] float32 on CPU, its rate in Hz). With batched decoding the work runs
    under the models' turn (its tokens' steps are shared while it waits), drawing its tokens from
    a generator of its own. `stream`: chunks of the audio as its tokens arrive (the generating
    modes; encode-decode has no tokens to stream). `adapter`: the request's lora_weights, read and
    checked (None: the adapter served as the weights, if any)."""
    work = functools.partial(_generate, request, models, seed, input_audio, stream, adapter)
    return models.in_turn(work, f"{request.model_version}, {request.mode}")


def _generate(
    request: Request,
    models: LoadedModels,
    seed: int,
    input_audio: DecodedAudio | None,
    stream: Stream | None,
    adapter: Adapter | None,
) -> tuple[torch.Tensor, int]:
    # Loaded on first use, before seeding (loading may draw random numbers): MultiBand Diffusion
    # (kept once loaded), then the model, evicting others to make room beside what is resident.
    if request.multi_band_diffusion:
        models.mbd  # noqa: B018
    served = None if request.mode == ENCODE_DECODE else models.get(request.model_version)
    adapted = None
    if served is not None:
        adapted = models.adapters.for_request(request.model_version, adapter, request.lora_scale, served.model.lm)
    seed_everything(seed)
    draws = None
    if models.batcher is not None:
        generator = torch.Generator(device=models.device).manual_seed(seed)
        draws = Draws(generator, functools.partial(seed_everything, seed))
    with torch.inference_mode():
        wav = MODES[request.mode](Generation(request, input_audio, served, models, draws, stream, adapted))
    rate = models.codec.sample_rate if served is None else served.model.sample_rate
    return wav.float().cpu(), rate
