"""One training's inputs as a frozen dataclass (train.py's, same names and defaults) and their rules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from musicgen.errors import InputError
from musicgen.input_rules import (
    MAX_LORA_RANK,
    MAX_PROMPT_CHARACTERS,
    MAX_SEED,
    RANDOM_SEED,
    check_range,
    set_whole_numbers,
    shortened,
)
from musicgen.train.source import check_source, is_remote
from musicgen.versions import ENCODE_DECODE, GENERATING

MIN_EPOCHS, MAX_EPOCHS = 1, 100
MIN_BATCH_SIZE, MAX_BATCH_SIZE = 1, 64
MIN_LR, MAX_LR = 1e-7, 1e-2
MAX_WARMUP_STEPS = 10_000


@dataclass(frozen=True)
class TrainRequest:
    """Every input of one training, as declared in train.py."""

    # an archive (zip, tar, tar.gz) of audio files and captions, or one audio file: a local file
    # (a Path), or over HTTP an http(s) URL or a data: URI (text; musicgen.train.source)
    dataset_path: Path | str | None
    one_same_description: str | None = None  # the caption of files without their own .txt
    model_version: str = "melody"  # the served model whose LM is fine-tuned
    epochs: int = 3
    batch_size: int = 4  # segments per optimizer step
    lr: float = 1e-5  # AdamW's peak learning rate
    warmup_steps: int = 10  # steps of linear warm-up before the cosine decay
    cfg_p: float = 0.3  # probability of dropping a batch's conditions (classifier-free guidance)
    drop_vocals: bool = True  # HT-Demucs removes the vocals before training
    seed: int | None = None  # None or -1: random
    lora_rank: int = 0  # 0: every LM weight trains; 1 to 128: low-rank adapters of that rank (musicgen.lora)

    def __post_init__(self) -> None:
        set_whole_numbers(self, ("epochs", "batch_size", "warmup_steps", "seed", "lora_rank"))  # JSON's 3.0 is 3
        caption = self.one_same_description
        if caption is not None and not caption.strip():
            object.__setattr__(self, "one_same_description", None)

    @property
    def wants_random_seed(self) -> bool:
        return self.seed is None or self.seed == RANDOM_SEED

    @property
    def lora(self) -> bool:
        """Whether it trains low-rank adapters (else the whole LM)."""
        return self.lora_rank > 0


def validate(request: TrainRequest) -> None:
    """Raise InputError for the first caller mistake found, before anything is read or loaded."""
    if request.model_version == ENCODE_DECODE:
        raise InputError(
            "model_version='encode-decode' runs audio through the codec and back; it has no language model "
            f"to fine-tune. Choose one of: {', '.join(GENERATING)}."
        )
    if request.model_version not in GENERATING:
        raise InputError(
            f"model_version={request.model_version!r} is not allowed; choose one of: {', '.join(GENERATING)}."
        )
    check_range("epochs", request.epochs, MIN_EPOCHS, MAX_EPOCHS)
    check_range("batch_size", request.batch_size, MIN_BATCH_SIZE, MAX_BATCH_SIZE)
    check_range("lr", request.lr, MIN_LR, MAX_LR)
    check_range("warmup_steps", request.warmup_steps, 0, MAX_WARMUP_STEPS)
    check_range("cfg_p", request.cfg_p, 0.0, 1.0)
    check_range("lora_rank", request.lora_rank, 0, MAX_LORA_RANK)
    if not request.wants_random_seed:
        check_range("seed", request.seed, 0, MAX_SEED)
    caption = request.one_same_description
    if caption is not None and len(caption) > MAX_PROMPT_CHARACTERS:
        raise InputError(
            f"one_same_description is {len(caption)} characters long; it may be at most {MAX_PROMPT_CHARACTERS} "
            f"(the text encoder reads about 512 tokens)."
        )
    if request.dataset_path is None:
        raise InputError("dataset_path is required: an archive (zip, tar, tar.gz) of audio files, or one audio file.")
    check_source(request.dataset_path)  # text must be a URL: a path on the server is never looked at
    if is_remote(request.dataset_path):
        return  # fetched by the training, under the operator's limits
    path = Path(request.dataset_path)
    if not path.is_file():
        raise InputError(f"dataset_path={shortened(str(path))!r}: no such file (an archive of audio files, or one).")
