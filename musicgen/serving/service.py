"""One prediction end to end: validate, fetch and decode the input, validate it, seed, generate, normalize, write."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from musicgen.audio import encode, levels, read
from musicgen.audio.fetch import FetchLimits, fetch
from musicgen.audio.read import DecodedAudio
from musicgen.errors import InputError
from musicgen.generate import draw_seed, generate, input_span
from musicgen.input_rules import is_url
from musicgen.lora.adapter import Adapter, AdapterRefused, read_adapter
from musicgen.models.load import LoadedModels, load_models
from musicgen.models.memory import release_freed_memory
from musicgen.request import Request, validate, validate_input_audio
from musicgen.settings import Settings
from musicgen.streaming.chunks import Stream
from musicgen.tokens.loops import ADAPTER_REFUSED, NEGATIVE_REFUSED
from musicgen.tokens.progress import timed
from musicgen.versions import ENCODE_DECODE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """One answered request: the output file, the seed it used, and how long generation took."""

    path: Path
    seed: int
    generate_seconds: float  # seeding, the mode's model work and its decode; not input or output I/O


def remove_folders(folders: list[Path], keep: int = 0) -> None:
    """Remove all but the last `keep` of `folders` (oldest first), from the list and the disk."""
    while len(folders) > keep:
        shutil.rmtree(folders.pop(0), ignore_errors=True)


class MusicGenService:
    """Holds the loaded models; turns one Request into one output file."""

    def __init__(
        self,
        models: LoadedModels,
        fetch_limits: FetchLimits | None = None,
        outputs_kept: int = 0,
        adapter_limits: FetchLimits | None = None,
    ):
        self.models = models
        self.fetch_limits = fetch_limits or FetchLimits.from_settings(Settings())
        self.adapter_limits = adapter_limits or FetchLimits.for_adapters(Settings())
        # Each prediction works in a folder of its own. Its output is read after predict() returns
        # (by the caller, or Cog), so the folder stays until `outputs_kept` later predictions have
        # started (one more per extra runtime slot: see musicgen.serving.workers), or the service goes away.
        self._outputs_kept = outputs_kept
        self._output_dirs: list[Path] = []
        weakref.finalize(self, remove_folders, self._output_dirs)

    @classmethod
    def load(cls, settings: Settings, fine_tuned: str | Path | None = None, outputs_kept: int = 0) -> MusicGenService:
        """Check the weights (or fetch them, when the operator allows it), then load the models
        once, as `settings` say; `fine_tuned`: a fine-tuned LM checkpoint (path or URL) served in
        place of its base. Input downloads are held to the settings' limits."""
        limits, adapter_limits = FetchLimits.from_settings(settings), FetchLimits.for_adapters(settings)
        models = load_models(settings, fine_tuned=fine_tuned or None)
        log.info("input_audio downloads: at most %s", limits.describe())
        return cls(models, limits, outputs_kept, adapter_limits)

    def predict(self, request: Request, on_chunk: Callable[[Path], None] | None = None) -> Prediction:
        """Every caller mistake is refused (InputError) before any model runs. `on_chunk`: a
        streaming prediction's (musicgen.streaming): called with each chunk's file as it is
        written, while the tokens arrive; the prediction's file is the whole piece, as without it."""
        remove_folders(self._output_dirs, self._outputs_kept)  # answers already delivered
        validate(request, self.models.servable)
        if request.negative_prompt and self.models.loop_choice == "audiocraft":
            raise InputError(NEGATIVE_REFUSED)
        if request.lora_weights is not None and self.models.loop_choice == "audiocraft":
            raise InputError(ADAPTER_REFUSED)
        folder = Path(tempfile.mkdtemp(prefix="musicgen-"))
        try:
            adapter = self._read_adapter(request, folder)
            input_audio = self._read_input(request, folder)
            seed = draw_seed() if request.wants_random_seed else request.seed
            log.info("seed %d (model_version=%s, mode=%s)", seed, request.model_version, request.mode)
            applied = self._applied(request, adapter)
            stream = None if on_chunk is None else self._stream(request, seed, folder, on_chunk, applied)
            start = time.perf_counter()
            wav, sample_rate = generate(request, self.models, seed, input_audio, stream, adapter)
            generate_seconds = time.perf_counter() - start
            # encode-decode keeps the input's channels (and loudness weighs them by position)
            layout = input_audio.channel_names if request.mode == ENCODE_DECODE else None
            input_audio = None  # its samples (up to read.MAX_DECODED_BYTES) go before the output's steps
            with timed("encode"):
                wav = levels.normalize(wav, sample_rate, request.normalization_strategy, layout)
                metadata = _metadata(request, seed, applied)
                # readable, and unique per content: two callers' files never share a name (an upload
                # URL), while the same inputs and seed, the same bytes, keep theirs
                digest = hashlib.sha256(wav.detach().cpu().contiguous().numpy().data).hexdigest()[:12]  # no copy
                stem = f"musicgen-{request.model_version}-{seed}-{digest}"
                path = encode.write_output(wav, sample_rate, folder, stem, request.output_format, metadata)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            release_freed_memory()  # this prediction's buffers, back to the system: RSS stays flat
        self._output_dirs.append(folder)
        return Prediction(path, seed, generate_seconds)

    @staticmethod
    def _stream(
        request: Request, seed: int, folder: Path, on_chunk: Callable[[Path], None], adapter: Adapter | None
    ) -> Stream:
        """The chunks of a streaming prediction: files in its folder, in the requested format."""

        def write(wav, sample_rate: int, index: int) -> Path:
            stem = f"musicgen-{request.model_version}-{seed}-part{index + 1:03d}"
            metadata = {**_metadata(request, seed, adapter), "chunk": str(index + 1)}
            return encode.write_output(wav, sample_rate, folder, stem, request.output_format, metadata)

        return Stream(write, on_chunk)

    def _read_adapter(self, request: Request, folder: Path) -> Adapter | None:
        """lora_weights read (a URL first fetched into `folder`, then removed) and checked against
        the request's model_version; a lora_scale other than 1 needs an adapter to scale."""
        version = request.model_version
        if request.lora_weights is None:
            if request.lora_scale != 1 and self.models.adapters.applied(version, None, 1) is None:
                raise InputError(
                    f"lora_scale={request.lora_scale!r} scales an adapter, and none applies to model_version={version!r}: "
                    f"give lora_weights, or leave lora_scale at 1."
                )
            return None
        source = request.lora_weights
        if is_url(source):
            source = fetch(source, folder, self.adapter_limits, name="lora_weights")
        try:
            adapter = read_adapter(Path(source))
        except AdapterRefused as why:
            raise InputError(f"lora_weights: {why}.") from None
        except OSError as error:
            raise InputError(f"lora_weights: the file cannot be read ({error.strerror}).") from None
        finally:
            if source is not request.lora_weights:
                Path(source).unlink(missing_ok=True)
        self.models.adapters.check(adapter, version)
        return adapter

    def _applied(self, request: Request, adapter: Adapter | None) -> Adapter | None:
        """The adapter the request's LM decodes with (none for encode-decode): what its file records."""
        if request.mode == ENCODE_DECODE:
            return None
        return self.models.adapters.applied(request.model_version, adapter, request.lora_scale)

    def _read_input(self, request: Request, folder: Path) -> DecodedAudio | None:
        """input_audio decoded (a URL first fetched into `folder`, then removed), and checked."""
        if request.input_audio is None:
            return None
        source = request.input_audio
        if is_url(source):
            source = fetch(source, folder, self.fetch_limits)
        try:
            input_audio = read.load_audio(source, span=input_span(request))  # only the part the mode reads
        finally:
            if source is not request.input_audio:
                source.unlink(missing_ok=True)
        validate_input_audio(request, input_audio.channel_names, input_audio.seconds)
        return input_audio


def _metadata(request: Request, seed: int, adapter: Adapter | None = None) -> dict[str, str]:
    """What an output file records: how to reproduce it (the adapter by its file's digest)."""
    metadata = {"model_version": request.model_version, "seed": str(seed)}
    if request.negative_prompt:
        metadata["negative_prompt"] = request.negative_prompt
    if adapter is not None:
        metadata |= {"lora_sha256": adapter.digest, "lora_scale": f"{request.lora_scale:g}"}
    return metadata
