"""One prediction end to end: validate, decode the input, validate it, seed, generate, normalize, write."""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from musicgen.audio import decode, encode, levels
from musicgen.generate import generate
from musicgen.models.load import LoadedModels, configured_versions, load_models
from musicgen.request import MAX_SEED, Request, validate, validate_input_audio

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """One answered request: the output file, the seed it used, and how long generation took."""

    path: Path
    seed: int
    generate_seconds: float  # seeding, the mode's model work and its decode; not input or output I/O


def remove_folders(folders: list[Path]) -> None:
    while folders:
        shutil.rmtree(folders.pop(), ignore_errors=True)


def draw_seed() -> int:
    """A random seed for callers who gave None or -1; it is logged so they can reproduce."""
    return random.SystemRandom().randint(0, MAX_SEED)


class MusicGenService:
    """Holds the loaded models; turns one Request into one output file."""

    def __init__(self, models: LoadedModels):
        self.models = models
        # The last prediction's folder: kept until the next prediction (the caller, or Cog, reads
        # the file after predict() returns), removed then, or when the service goes away.
        self._output_dirs: list[Path] = []
        weakref.finalize(self, remove_folders, self._output_dirs)

    @classmethod
    def load(cls, fine_tuned: str | Path | None = None) -> MusicGenService:
        """Check the weights (or fetch them, when the operator allows it), then load the models
        once; `fine_tuned`: a fine-tuned LM checkpoint (path or URL) served in place of its base."""
        return cls(load_models(configured_versions(), fine_tuned=fine_tuned or None))

    def predict(self, request: Request) -> Prediction:
        """Every caller mistake is refused (InputError) before any model runs."""
        remove_folders(self._output_dirs)  # the previous answer was delivered: nothing is left behind
        validate(request, self.models.served)
        input_audio = None
        if request.input_audio is not None:
            input_audio = decode.load_audio(request.input_audio)
            validate_input_audio(request, input_audio.channels, input_audio.seconds)
        seed = draw_seed() if request.wants_random_seed else request.seed
        log.info("seed %d (model_version=%s, mode=%s)", seed, request.model_version, request.mode)
        output_dir = Path(tempfile.mkdtemp(prefix="musicgen-"))
        try:
            start = time.perf_counter()
            wav, sample_rate = generate(request, self.models, seed, input_audio)
            generate_seconds = time.perf_counter() - start
            wav = levels.normalize(wav, sample_rate, request.normalization_strategy)
            metadata = {"model_version": request.model_version, "seed": str(seed)}
            stem = f"musicgen-{request.model_version}-{seed}"
            path = encode.write_output(wav, sample_rate, output_dir, stem, request.output_format, metadata)
        except BaseException:
            shutil.rmtree(output_dir, ignore_errors=True)
            raise
        self._output_dirs.append(output_dir)
        return Prediction(path, seed, generate_seconds)
