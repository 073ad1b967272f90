"""What a caller may send: the service's fixed limits and choices, and the rule helpers predictions
and trainings share (whole numbers, ranges, URLs, quoting a caller's text).

musicgen.request (predictions) and musicgen.train.options (trainings) enforce them; the layers
below (audio, train, generate) read the limits from here, never from the request module.
"""

from __future__ import annotations

import math

from musicgen.errors import InputError

NORMALIZATION_STRATEGIES = ("loudness", "clip", "peak", "rms")  # audiocraft's audio_write strategies
OUTPUT_FORMATS = ("wav", "mp3")
MIN_DURATION = 1  # seconds
MAX_DURATION = 60  # seconds; past 30 s generation runs in overlapping windows
MAX_CLASSIFIER_FREE_GUIDANCE = 30
MIN_SAMPLING_TEMPERATURE = 0.01  # below it logits / temperature overflow (float16 on GPU first)
MAX_PROMPT_CHARACTERS = 2000  # about T5's 512-token context; longer prompts only cost time
MAX_SEED = 2**32 - 1
RANDOM_SEED = -1  # like None: draw a random seed
MAX_CONTEXT = 30  # seconds the LM attends to; a continuation window may not be longer
MIN_INPUT_SECONDS = 0.1  # shorter inputs carry no usable melody or prompt
MAX_MP3_CHANNELS = 2  # MP3 holds mono or stereo
URL_SCHEMES = ("http", "https", "data")  # what a file input given as text may be
MIN_LORA_SCALE, MAX_LORA_SCALE = -1.0, 2.0  # 1: the adapter as trained; 0: the base model; < 0: steered away
MIN_LORA_RANK, MAX_LORA_RANK = 1, 128  # a training's lora_rank (0: full fine-tuning)


def set_whole_numbers(inputs: object, names: tuple[str, ...]) -> None:
    """Each of `names` on the frozen dataclass `inputs` that arrived as a float (JSON's 7.0) becomes
    the integer it is; InputError for a fraction."""
    for name in names:
        value = getattr(inputs, name)
        if isinstance(value, float):
            if not (math.isfinite(value) and value.is_integer()):
                raise InputError(f"{name}={value!r} is not allowed; it must be a whole number.")
            object.__setattr__(inputs, name, int(value))


def check_range(name: str, value: float, low: float, high: float | None) -> None:
    """InputError unless `value` is a finite number from `low` to `high` (None: no upper bound)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{name}={value!r} must be a finite number.")
    if value < low or (high is not None and value > high):
        allowed = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InputError(f"{name}={value!r} is out of range; it must be {allowed}.")


def is_url(value: object) -> bool:
    """Whether `value` is text naming one of URL_SCHEMES (what HTTP callers send for a file)."""
    return isinstance(value, str) and value.partition(":")[0].lower() in URL_SCHEMES and ":" in value


def shortened(text: str, limit: int = 120) -> str:
    """`text` cut to `limit` characters for a message (a caller's URL can be megabytes of data: URI)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
