"""One prediction's inputs as a frozen dataclass, and every rule that refuses a caller's mistake.

The rules run in two steps, both before any model work: validate() on the request and what the
deployment serves; validate_input_audio() once input_audio is decoded (its length and channels).
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from musicgen.audio.channels import undefined_for_loudness
from musicgen.errors import InputError
from musicgen.input_rules import (
    MAX_CLASSIFIER_FREE_GUIDANCE,
    MAX_CONTEXT,
    MAX_DURATION,
    MAX_LORA_SCALE,
    MAX_MP3_CHANNELS,
    MAX_PROMPT_CHARACTERS,
    MAX_SEED,
    MIN_DURATION,
    MIN_INPUT_SECONDS,
    MIN_LORA_SCALE,
    MIN_SAMPLING_TEMPERATURE,
    NORMALIZATION_STRATEGIES,
    OUTPUT_FORMATS,
    RANDOM_SEED,
    check_range,
    is_url,
    set_whole_numbers,
    shortened,
)
from musicgen.versions import ENCODE_DECODE, GENERATING, MODEL_VERSIONS


@dataclass(frozen=True)
class Request:
    """Every input of one prediction, as declared in predict.py (same names and defaults)."""

    model_version: str = "melody"
    prompt: str | None = None  # whitespace only counts as empty
    # A local file as a Path (the command line, Python), or an http(s) / data: URL as text (HTTP
    # callers: text is never read as a path, so a caller cannot name the server's own files).
    input_audio: Path | str | None = None
    duration: int = 8  # seconds of NEW audio (a continuation's prompt window comes on top)
    continuation: bool = False
    continuation_start: int = 0  # seconds into input_audio
    continuation_end: int | None = None  # seconds into input_audio; None or -1: end of file
    multi_band_diffusion: bool = False
    normalization_strategy: str = "loudness"
    top_k: int = 250  # 0: no top-k restriction
    top_p: float = 0.0  # 0: top-k sampling is used
    temperature: float = 1.0  # 0: greedy decoding
    classifier_free_guidance: int = 3
    output_format: str = "wav"
    seed: int | None = None  # None or -1: random
    negative_prompt: str | None = None  # the unconditional half of guidance; whitespace only counts as empty
    # A low-rank adapter (musicgen.lora): an http(s) / data: URL as text, or a local file as a Path
    # (the command line, Python), as input_audio.
    lora_weights: Path | str | None = None
    lora_scale: float = 1.0  # the adapter's strength: 1 as trained, 0 the base model

    def __post_init__(self) -> None:
        """JSON and the command line may send a whole number as 7.0: it is 7; 7.5 is refused."""
        set_whole_numbers(self, WHOLE_NUMBER_INPUTS)
        if self.prompt is not None and not self.prompt.strip():
            object.__setattr__(self, "prompt", "")  # like "": no text condition
        if self.negative_prompt is not None and not self.negative_prompt.strip():
            object.__setattr__(self, "negative_prompt", None)  # like leaving it out
        if isinstance(self.lora_weights, str) and not self.lora_weights.strip():
            object.__setattr__(self, "lora_weights", None)  # like leaving it out

    @property
    def mode(self) -> str:
        """What the request asks for: text, melody, continuation or encode-decode."""
        if self.model_version == ENCODE_DECODE:
            return ENCODE_DECODE
        if self.input_audio is None:
            return "text"
        return "continuation" if self.continuation else "melody"

    @property
    def wants_random_seed(self) -> bool:
        return self.seed is None or self.seed == RANDOM_SEED


# The integer inputs (seed, duration, top_k, ...), by their declared types.
WHOLE_NUMBER_INPUTS = tuple(
    name for name, hint in typing.get_type_hints(Request).items() if int in (hint, *typing.get_args(hint))
)


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(f"{name}={value!r} is not allowed; choose one of: {', '.join(allowed)}.")


def validate(request: Request, served: Mapping[str, int] | None = None) -> None:
    """Raise InputError for the first caller mistake found; return None for a valid request.

    `served`: the deployment's generating model versions, each with its codebook size (top_k's
    upper bound); None checks only what the request itself says.
    """
    _check_choice("model_version", request.model_version, MODEL_VERSIONS)
    _check_choice("normalization_strategy", request.normalization_strategy, NORMALIZATION_STRATEGIES)
    _check_choice("output_format", request.output_format, OUTPUT_FORMATS)
    check_range("duration", request.duration, MIN_DURATION, MAX_DURATION)
    check_range("top_k", request.top_k, 0, None)
    check_range("top_p", request.top_p, 0.0, 1.0)
    check_range("temperature", request.temperature, 0.0, None)
    if 0 < request.temperature < MIN_SAMPLING_TEMPERATURE:
        raise InputError(
            f"temperature={request.temperature!r} is too small to sample with; use 0 for greedy decoding "
            f"or a value of at least {MIN_SAMPLING_TEMPERATURE}."
        )
    for name, text in (("prompt", request.prompt), ("negative_prompt", request.negative_prompt)):
        if text is not None and len(text) > MAX_PROMPT_CHARACTERS:
            raise InputError(
                f"{name} is {len(text)} characters long; it may be at most {MAX_PROMPT_CHARACTERS} "
                f"(the text encoder reads about 512 tokens)."
            )
    if request.negative_prompt is not None and "\0" in request.negative_prompt:
        raise InputError("negative_prompt holds a NUL character; send text without it.")  # it goes into the file's tags
    check_range("classifier_free_guidance", request.classifier_free_guidance, 0, MAX_CLASSIFIER_FREE_GUIDANCE)
    if not request.wants_random_seed:
        if request.seed < 0:
            raise InputError(
                f"seed={request.seed} is not allowed; use an integer from 0 to {MAX_SEED}, "
                f"or -1 / leave it out for a random seed."
            )
        check_range("seed", request.seed, 0, MAX_SEED)

    for name, example in (("input_audio", "song.wav"), ("lora_weights", "adapter.safetensors")):
        value = getattr(request, name)
        if isinstance(value, str) and not is_url(value):
            raise InputError(
                f"{name}={shortened(value)!r} is not a URL; give an http(s) URL or a data: URI "
                f"(a local file only from the command line, -i {name}={example}, or as a pathlib.Path from Python)."
            )
    check_range("lora_scale", request.lora_scale, MIN_LORA_SCALE, MAX_LORA_SCALE)
    if request.model_version == ENCODE_DECODE:
        if request.input_audio is None:
            raise InputError("input_audio is required when model_version='encode-decode'.")
        if request.lora_weights is not None:
            raise InputError("lora_weights adapts a language model; model_version='encode-decode' has none.")
        return
    if request.continuation:
        _validate_continuation_window(request)
    elif request.input_audio is not None and not GENERATING[request.model_version].melody:
        takes_melody = ", ".join(repr(name) for name, version in GENERATING.items() if version.melody)
        raise InputError(
            f"model_version={request.model_version!r} has no melody conditioning, so input_audio with "
            f"continuation=False is not supported; use a model_version with melody conditioning ({takes_melody}), "
            f"or set continuation=True to continue the audio."
        )
    if not request.prompt and request.input_audio is None:
        raise InputError(
            f"prompt is empty and no input_audio was given; model_version={request.model_version!r} "
            f"needs a prompt, an input_audio, or both."
        )
    if served is not None:
        _validate_served(request, served)


def _validate_continuation_window(request: Request) -> None:
    """The parts of the continuation window that can be checked before the audio is read."""
    if request.input_audio is None:
        raise InputError("input_audio is required when continuation=True: it is the audio to continue.")
    if request.continuation_start < 0:
        raise InputError(f"continuation_start={request.continuation_start} must be 0 or more seconds.")
    end = request.continuation_end
    if end is not None and end != -1 and end <= request.continuation_start:
        raise InputError(
            f"continuation_end={end} must be greater than continuation_start={request.continuation_start} "
            f"(or -1 / left out for the end of the file)."
        )


def _validate_served(request: Request, served: Mapping[str, int]) -> None:
    """What depends on the loaded models: the version must be served, top_k within its codebook."""
    if request.model_version not in served:
        raise InputError(
            f"model_version={request.model_version!r} is not loaded by this deployment; it serves "
            f"{', '.join(served)} (the operator preloads with MUSICGEN_MODEL_VERSIONS; any other version is served once "
            f"its weights are in place: python -m musicgen download {request.model_version})."
        )
    card = served[request.model_version]
    if request.top_k > card:
        raise InputError(f"top_k={request.top_k} is out of range; it must be between 0 and {card}.")


def validate_input_audio(request: Request, channel_names: Sequence[str], seconds: float) -> None:
    """The rules that need the decoded input_audio: its length (continuation window) and channels
    (encode-decode keeps them, so the output format and normalization must hold them).

    `channel_names`: ffmpeg's names of the input's channels (FL FR FC LFE BL BR for 5.1).
    """
    if request.mode == "continuation":
        continuation_bounds(request, seconds)
    if request.mode != ENCODE_DECODE:
        return
    channels = len(channel_names)
    undefined = undefined_for_loudness(channel_names)
    if request.normalization_strategy == "loudness" and undefined:
        raise InputError(
            f"normalization_strategy='loudness' (ITU-R BS.1770) weighs each channel by its loudspeaker position, "
            f"but this audio's channel(s) {' '.join(undefined)} have none (layout: {' '.join(channel_names)}; "
            f"encode-decode keeps input_audio's channels); use normalization_strategy 'peak', 'rms' or 'clip'."
        )
    if request.output_format == "mp3" and channels > MAX_MP3_CHANNELS:
        raise InputError(
            f"output_format='mp3' holds mono or stereo audio, but this audio has {channels} channels "
            f"(encode-decode keeps input_audio's channels); use output_format='wav'."
        )


def continuation_bounds(request: Request, seconds: float) -> tuple[float, float]:
    """The continuation window [start, end) in seconds, checked against input_audio's length."""
    start = request.continuation_start
    end = seconds if request.continuation_end in (None, -1) else request.continuation_end
    named_end = "end of file" if request.continuation_end in (None, -1) else request.continuation_end
    if start >= seconds:
        raise InputError(
            f"continuation_start={start} is past the end of input_audio ({seconds:.2f} s long); "
            f"it must be less than {seconds:.2f}."
        )
    if end > seconds:
        raise InputError(
            f"continuation_end={request.continuation_end} is past the end of input_audio ({seconds:.2f} s long); "
            f"use a value up to {math.floor(seconds)}, or -1 for the end of the file."
        )
    if end - start > MAX_CONTEXT:
        raise InputError(
            f"the continuation window continuation_start={start} to continuation_end={named_end} "
            f"is {end - start:.2f} s long; it may be at most {MAX_CONTEXT} s (the model's context)."
        )
    if end - start < MIN_INPUT_SECONDS:
        raise InputError(
            f"the continuation window continuation_start={start} to continuation_end={named_end} "
            f"is {end - start:.3f} s long; it must be at least {MIN_INPUT_SECONDS} s of input_audio."
        )
    return start, end
