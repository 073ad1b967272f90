"""Load each model once, on the best device and dtype, keep what fits, and say what is resident.

The memory plan (docs/memory.md has the sizes):

- setup() loads the versions the MUSICGEN_MODEL_VERSIONS setting names (melody and large by default) with
  audiocraft's own loader and keeps them: on CUDA their transformer layers are float16 (what
  `load_lm_model` asks for on a GPU), on CPU everything is float32.
- Every other version whose weights are present (the model table: musicgen.versions) loads on
  its first request and stays while it fits the memory budget
  (musicgen.models.budget); the least recently used of them is evicted to make room.
- One 32 kHz EnCodec per distinct file: melody and large ship byte-identical copies (loaded
  once; encode-decode and MultiBand Diffusion use it too); the 3.3 B melody and stereo ones point
  to the Hugging Face EnCodec, loaded once for all of them. A stereo model wraps its EnCodec in
  audiocraft's interleaving (MusicGen() does it from the LM's config).
- One T5-base encoder (and tokenizer) and one HT-Demucs (the melody models' chroma conditioner),
  loaded once and handed to every LM that needs them (cold_start.SharedModules).
- MultiBand Diffusion is loaded on first use, over melody's EnCodec, and then kept.
- A fine-tuned LM checkpoint replaces the served version it fits; that base is never loaded.
- A LoRA adapter given as the weights is served on its base version, which loads as released;
  adapters given per request are kept ready by content (musicgen.lora.cache), counted by the budget.

Cold start (musicgen.models.cold_start): checkpoints memory-mapped, random initialisation skipped,
the LMs loaded in parallel threads. The result is the very model `MusicGen.get_pretrained` returns.
"""

from __future__ import annotations

import collections
import functools
import gc
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from audiocraft.models import MultiBandDiffusion, MusicGen, loaders

from musicgen.cancellation import uninterrupted
from musicgen.errors import WeightsError
from musicgen.lora.adapter import is_adapter_file
from musicgen.lora.cache import AdapterCache
from musicgen.models.adapters import ServedAdapters
from musicgen.models.budget import MemoryBudget, configured_budget, evictions
from musicgen.models.codecs import same_codec
from musicgen.models.cold_start import SharedModules, fast_loading, skipping_random_init
from musicgen.models.diffusion import load_mbd
from musicgen.models.fine_tuned import check_fine_tuned
from musicgen.models.memory import (
    MB,
    bound_onednn_cache,
    bound_pattern_cache,
    format_bytes,
    format_memory,
    memory_report,
    mono_codec,
    release_freed_memory,
)
from musicgen.models.sizes import lm_bytes, lm_card, static_bytes
from musicgen.settings import Settings, best_device
from musicgen.tokens.batching import Batcher
from musicgen.tokens.choose import choose_loop
from musicgen.tokens.loops import TokenLoop
from musicgen.versions import GENERATING
from musicgen.weights import layout, store

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Served:
    """A resident model version: its MusicGen (LM, EnCodec, conditioners) and the token loop that
    serves it, chosen and checked when it loaded (musicgen.tokens.choose)."""

    model: MusicGen
    loop: TokenLoop


@dataclass
class LoadedModels:
    """Everything resident for serving, on one device: one Served model per loaded model_version.

    `preloaded` versions are loaded by load_models() and stay; every other version in
    `checkpoints` (its weights were present at setup) is loaded by get() on first use and evicted,
    least recently used first, when another needs its room in `budget`.
    """

    device: str
    root: Path
    preloaded: tuple[str, ...] = ()
    loop_choice: str = "musicgen"  # the MUSICGEN_TOKEN_LOOP setting
    budget: MemoryBudget | None = None  # None: no limit (models assembled by hand, tests)
    resident: dict[str, Served] = field(default_factory=dict)
    checkpoints: dict[str, Path] = field(default_factory=dict)  # the LM file each servable version loads
    shared: SharedModules = field(default_factory=SharedModules)  # T5, HT-Demucs: one each, for every LM
    _codecs: dict[Path, torch.nn.Module] = field(default_factory=dict)  # loaded EnCodec files
    _sizes: dict[str, int] = field(default_factory=dict)  # bytes each loaded LM holds
    _cards: dict[str, int] = field(default_factory=dict)  # each servable LM's codebook size
    _recent: collections.OrderedDict = field(default_factory=collections.OrderedDict)  # least recent first
    loads: collections.Counter = field(default_factory=collections.Counter)  # model_version -> loads so far
    evictions: collections.Counter = field(default_factory=collections.Counter)  # and evictions (the metrics)
    max_batch: int = 1  # the MUSICGEN_MAX_BATCH setting, resolved for the device
    stall_seconds: float = Settings.stall_seconds  # the MUSICGEN_STALL_SECONDS setting
    adapter_rank: int = Settings.lora_slot_rank  # the MUSICGEN_LORA_SLOT_RANK setting
    adapter_cache_bytes: int = int(Settings.lora_cache_mb * MB)  # the MUSICGEN_LORA_CACHE_MB setting
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _mbd: MultiBandDiffusion | None = None

    def __post_init__(self):
        # N > 1: concurrent predictions of one model decode together (musicgen.tokens.batching)
        self.batcher = Batcher(self.max_batch, self.stall_seconds, self.adapter_rank) if self.max_batch > 1 else None
        self.adapters = ServedAdapters(AdapterCache(self.adapter_cache_bytes), self.checkpoints)

    def in_turn(self, work: Callable[[], T], label: str) -> T:
        """work(), as a prediction does its work with the models outside the batched steps: under
        the batcher's turn (one prediction at a time; given up while it waits for its tokens), or
        as it is when predictions run one at a time anyway (N = 1). `label`: what it does (logs)."""
        return work() if self.batcher is None else self.batcher.turn.run(work, label)

    def get(self, version: str) -> Served:
        """The one loader: `version`'s model and token loop, loaded now if not resident (request.validate
        refuses versions not in `servable`). Raises CapacityError when it cannot fit the budget."""
        with self._lock, uninterrupted():
            if version not in self.resident:
                self.load([version])
            self._recent[version] = None
            self._recent.move_to_end(version)
            return self.resident[version]

    @property
    def models(self) -> dict[str, MusicGen]:
        """The resident MusicGens by model_version."""
        return {version: served.model for version, served in self.resident.items()}

    @property
    def servable(self) -> dict[str, int]:
        """Each generating version served (resident or loadable), with its codebook size: what
        request.validate checks against."""
        for version, path in self.checkpoints.items():
            if version not in self._cards:
                self._cards[version] = lm_card(path)  # read once, without loading the weights
        for version, served in self.resident.items():
            self._cards[version] = served.model.lm.card
        return {version: self._cards[version] for version in {**self.checkpoints, **self.resident}}

    def memory_report(self) -> dict[str, int]:
        """Bytes resident per component, then the process (musicgen.models.memory)."""
        return memory_report(self.models, self._mbd, self.device, codecs=list(self._codecs.values()))

    @property
    def codec(self) -> torch.nn.Module:
        """The mono 32 kHz EnCodec of musicgen-melody's folder (what the encode-decode and mbd
        download targets fetch): encode-decode and MultiBand Diffusion run on it. The released
        melody and large checkpoints share it, so it is normally already loaded. Without
        melody's file: the mono EnCodec of the first loaded model."""
        if (layout.model_dir("melody", self.root) / layout.CODEC_FILE).is_file() or not self.resident:
            return self.codec_for("melody")
        return mono_codec(next(iter(self.resident.values())).model.compression_model)

    def codec_for(self, version: str) -> torch.nn.Module:
        """The mono EnCodec under `version`'s folder, loaded once per distinct file."""
        with self._lock, uninterrupted():
            return self._load_codecs({version: layout.model_dir(version, self.root) / layout.CODEC_FILE})[version]

    @property
    def mbd(self) -> MultiBandDiffusion:
        """MultiBand Diffusion, loaded on first use and then kept."""
        with self._lock, uninterrupted():
            if self._mbd is None:
                self._mbd = load_mbd(self.codec, self.device, self.root)
                release_freed_memory()
                log.info("memory with MultiBand Diffusion: %s", format_memory(self.memory_report()))
        return self._mbd

    def load(self, versions: list[str]) -> None:
        """Load `versions` (not resident yet), sharing EnCodec, T5 and HT-Demucs with what is;
        each one beyond the preloaded ones first makes room in the budget."""
        start = time.perf_counter()
        for version in versions:
            if version not in self.preloaded:
                self._make_room(version)
        paths = {version: self.checkpoints[version] for version in versions}
        with fast_loading(self.shared):
            codecs = self._load_codecs({v: layout.model_dir(v, self.root) / layout.CODEC_FILE for v in versions})
            lms = _in_parallel(functools.partial(load_lm, device=self.device), paths)
        release_freed_memory()
        for version, path in paths.items():
            name = str(path.parent if path.name == layout.LM_FILE else path)  # get_pretrained's name: the folder
            model = assemble(name, codecs[version], lms[version])
            bound_pattern_cache(model.lm)
            loop = choose_loop(model, version, self.loop_choice, batcher=self.batcher)  # checked now
            self.resident[version] = Served(model, loop)
            # its weights, and its loop's static buffers (the CUDA graph's cache, the batch's slots)
            self._sizes[version] = self.memory_report()[f"lm:{version}"] + static_bytes(loop, self.batcher)
            self._recent[version] = None
            self.loads[version] += 1
        seconds = time.perf_counter() - start
        sizes = ", ".join(f"{version} {format_bytes(self._sizes[version])}" for version in versions)
        log.info("loaded %s on %s in %.1f s (%s)", ", ".join(versions), self.device, seconds, sizes)

    def evict(self, version: str) -> None:
        """Drop `version`'s model and token loop, and hand their memory back."""
        start = time.perf_counter()
        size = self._sizes.pop(version, 0)
        served = self.resident.pop(version)
        if self.batcher is not None:
            self.batcher.forget(served.loop)  # its slots go once its running windows are done
        del served
        self._recent.pop(version, None)
        self.evictions[version] += 1
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        release_freed_memory()
        log.info("evicted %s (%s) in %.2f s", version, format_bytes(size), time.perf_counter() - start)

    def resident_bytes(self) -> int:
        """What the budget counts: on CUDA everything allocated, on a CPU the models' tensors."""
        if self.device.startswith("cuda"):
            return torch.cuda.memory_allocated(torch.device(self.device))
        report = self.memory_report()
        models = sum(size for name, size in report.items() if name not in ("process_rss", "cuda_allocated"))
        return models + self.adapters.nbytes  # the adapters ready on the device

    def _make_room(self, version: str) -> None:
        if self.budget is None:
            return
        need = lm_bytes(self.checkpoints[version], self.device, self.max_batch)
        evictable = {name: self._sizes.get(name, 0) for name in self._recent if name not in self.preloaded}
        for name in evictions(need, self.resident_bytes(), self.budget, evictable, version):
            self.evict(name)

    def _load_codecs(self, paths: dict[str, Path]) -> dict[str, torch.nn.Module]:
        """Each version's EnCodec, loaded once per distinct codec (codecs.same_codec: the released mono
        files are all the same; the pointers all name the same Hugging Face EnCodec); a stereo
        model wraps it in audiocraft's interleaving when assembled."""
        codecs: dict[str, torch.nn.Module] = {}
        for version, path in paths.items():
            same = next((codec for other, codec in self._codecs.items() if same_codec(other, path, self.root)), None)
            if same is None:
                start = time.perf_counter()
                with skipping_random_init():
                    same = self._codecs[path] = loaders.load_compression_model(str(path.parent), device=self.device)
                log.info("loaded the EnCodec %s in %.1f s", _shown(path), time.perf_counter() - start)
            codecs[version] = same
        return codecs


def load_models(
    settings: Settings,
    versions: tuple[str, ...] | None = None,
    fine_tuned: str | Path | None = None,
) -> LoadedModels:
    """Load `versions` (default: the settings' MUSICGEN_MODEL_VERSIONS) once each, sharing EnCodec,
    T5 and HT-Demucs, and log what is resident; the weights root, device, budget and token loop are
    the settings'.

    The weights are checked first (a fast, clear error, or a download when the operator allows it).
    Every other generating version whose weights are present is servable, loaded on first use.
    `fine_tuned`: a fine-tuned LM checkpoint (path or URL) served in place of the base model whose
    conditioners and channels it has (see check_fine_tuned); it is loaded now.
    """
    bound_onednn_cache(settings.onednn_cache_entries)  # before the first convolution: oneDNN reads it once
    root, versions = settings.weights_root, versions or settings.model_versions
    store.ensure_weights(list(versions), root, settings.download_on_setup, hub=settings.hub_endpoint)
    layout.check_hub(root)  # T5 is read through the Hugging Face cache under the same root
    device = best_device(settings.device)
    models = LoadedModels(
        device=device,
        root=root,
        preloaded=tuple(versions),
        loop_choice=settings.token_loop,
        budget=configured_budget(device, settings.memory_budget_gb),
        max_batch=settings.max_batch_on(device),
        stall_seconds=settings.stall_seconds,
        adapter_rank=settings.lora_slot_rank,
        adapter_cache_bytes=int(settings.lora_cache_mb * MB),
    )
    for version in GENERATING:
        if version in versions or store.is_present([version], root):
            models.checkpoints[version] = layout.model_dir(version, root) / layout.LM_FILE
    if fine_tuned is not None:
        path = store.fine_tuned_checkpoint(fine_tuned, root)
        if is_adapter_file(path):
            version = models.adapters.serve(path)
            log.info("serving the adapter %s (rank %d) on %s", path, models.adapters.weights.rank, version)
        else:
            version = check_fine_tuned(path, models.preloaded, list(models.checkpoints), models.codec_for)
            log.info("serving the fine-tuned checkpoint %s as %s (the base %s is not loaded)", path, version, version)
            models.checkpoints[version] = path
        models.preloaded = tuple(dict.fromkeys((*models.preloaded, version)))  # loaded at setup
    models.load(list(models.preloaded))
    on_demand = [version for version in models.checkpoints if version not in models.preloaded]
    log.info(
        "memory after setup: %s; budget %s; loaded on first use: %s",
        format_memory(models.memory_report()),
        models.budget.describe(),
        ", ".join(on_demand) or "none (no other model's weights are present)",
    )
    if models.resident_bytes() > models.budget.limit:
        log.warning("the preloaded models already exceed the memory budget: no other model can be loaded")
    return models


def load_lm(path: Path, device: str) -> torch.nn.Module:
    """audiocraft's `load_lm_model` on one checkpoint file (call it inside fast_loading())."""
    start = time.perf_counter()
    with skipping_random_init():
        try:
            lm = loaders.load_lm_model(str(path), device=device)
        except RuntimeError as error:
            if not str(error).startswith("Error(s) in loading state_dict"):
                raise
            raise WeightsError(f"{path} does not fit the model its own config describes: {error}") from None
    log.info("loaded the LM %s in %.1f s", _shown(path), time.perf_counter() - start)
    return lm


def _shown(path: Path) -> str:
    """A checkpoint as a prediction's logs name it: its folder and file, never the server's path
    (a model loaded on first use logs inside the prediction, and Cog returns those logs to the caller)."""
    return f"{path.parent.name}/{path.name}"


def assemble(name: str, codec: torch.nn.Module, lm: torch.nn.Module) -> MusicGen:
    """What `MusicGen.get_pretrained` builds from a loaded LM and EnCodec, melody settings included."""
    if "self_wav" in lm.condition_provider.conditioners:
        lm.condition_provider.conditioners["self_wav"].match_len_on_eval = True
        lm.condition_provider.conditioners["self_wav"]._use_masking = False
    return MusicGen(name, codec, lm)


def _in_parallel(load: Callable[[Path], torch.nn.Module], paths: dict[str, Path]) -> dict[str, torch.nn.Module]:
    """load(path) for every version at once, one thread each: reading one checkpoint overlaps
    with building and copying the other."""
    with ThreadPoolExecutor(max_workers=len(paths), thread_name_prefix="load") as pool:
        futures = {version: pool.submit(load, path) for version, path in paths.items()}
        return {version: future.result() for version, future in futures.items()}
