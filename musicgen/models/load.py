"""Load each model once, on the best device and dtype, and say what is resident.

The memory plan (README.md, "Memory plan", has the sizes):

- setup() loads the melody and large LMs with audiocraft's own loader: on CUDA their transformer
  layers are float16 (what `load_lm_model` asks for on a GPU), on CPU everything is float32.
- One 32 kHz EnCodec, loaded once: the melody and large checkpoints ship byte-identical copies.
  It serves both LMs, encode-decode and MultiBand Diffusion.
- One T5-base encoder (and tokenizer), loaded once and handed to both LMs' text conditioners;
  HT-Demucs is loaded once, by the melody LM's chroma conditioner (the large LM has none).
- MultiBand Diffusion is loaded on first use, over the same EnCodec, and then kept.
- A fine-tuned LM checkpoint replaces the base model it matches; that base is never loaded.

Cold start (musicgen.models.cold_start): checkpoints memory-mapped, random initialisation skipped,
the LMs loaded in parallel threads. The result is the very model `MusicGen.get_pretrained` returns.
"""

from __future__ import annotations

import collections
import filecmp
import functools
import logging
import os
import pickle
import threading
import time
import typing
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import omegaconf
import torch
from audiocraft.models import MultiBandDiffusion, MusicGen, loaders
from audiocraft.models.loaders import load_diffusion_models
from audiocraft.models.multibanddiffusion import DiffusionProcess
from audiocraft.modules.diffusion_schedule import NoiseSchedule

from musicgen.decode.decoders import Decoder
from musicgen.decode.select import configured_decoder, load_decoder
from musicgen.errors import WeightsError
from musicgen.models.cold_start import fast_loading, skipping_random_init
from musicgen.models.fine_tuned import check_fine_tuned
from musicgen.models.memory import format_memory, memory_report, release_freed_memory
from musicgen.request import VERSIONS_ENV
from musicgen.weights import layout, store

log = logging.getLogger(__name__)

DEVICE_ENV = "MUSICGEN_DEVICE"  # "cpu" or "cuda[:N]", to override the automatic choice
GENERATING_VERSIONS = ("melody", "large")  # loaded at setup; encode-decode reuses their codec
# The released MultiBand Diffusion file pickles its OmegaConf configs. torch's safe loader
# (weights_only=True) refuses any class not named here; safety is never switched off.
MBD_SAFE_GLOBALS = [
    omegaconf.DictConfig,
    omegaconf.ListConfig,
    omegaconf.base.ContainerMetadata,
    omegaconf.base.Metadata,
    omegaconf.nodes.AnyNode,
    omegaconf.nodes.StringNode,
    omegaconf.nodes.IntegerNode,
    omegaconf.nodes.FloatNode,
    omegaconf.nodes.BooleanNode,
    typing.Any,
    collections.defaultdict,
    dict,
    list,
    int,
]


def best_device() -> str:
    """$MUSICGEN_DEVICE if set; else CUDA when present (the LM then runs in float16), else CPU."""
    return os.environ.get(DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "cpu")


def configured_versions() -> tuple[str, ...]:
    """The model versions setup() loads: $MUSICGEN_MODEL_VERSIONS (e.g. "melody"), else both."""
    text = os.environ.get(VERSIONS_ENV, "")
    versions = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in versions if name not in GENERATING_VERSIONS]
    if unknown:
        raise WeightsError(
            f"{VERSIONS_ENV}={text!r} names {', '.join(unknown)}; use a comma-separated subset of "
            f"{', '.join(GENERATING_VERSIONS)} (encode-decode uses whichever model's codec is loaded)."
        )
    return versions or GENERATING_VERSIONS


@dataclass
class LoadedModels:
    """Everything resident for serving: one MusicGen per model_version, on one device."""

    device: str
    generators: dict[str, MusicGen] = field(default_factory=dict)
    decoders: dict[str, Decoder] = field(default_factory=dict)  # the token loop serving each version
    checkpoints: dict[str, Path] = field(default_factory=dict)  # the LM file each version serves
    _mbd: MultiBandDiffusion | None = None
    _mbd_lock: threading.Lock = field(default_factory=threading.Lock)

    def generator(self, version: str) -> MusicGen:
        """The loaded model for `version` (musicgen.request.validate refuses versions not served)."""
        return self.generators[version]

    def decoder(self, version: str) -> Decoder:
        """The loop generating `version`'s tokens (musicgen.decode.select chooses it at load, or
        here on first use for models assembled by hand)."""
        if version not in self.decoders:
            self.decoders[version] = load_decoder(self.generators[version], version)
        return self.decoders[version]

    @property
    def served(self) -> dict[str, int]:
        """Each generating version served, with its codebook size: what request.validate checks against."""
        return {version: model.lm.card for version, model in self.generators.items()}

    def memory_report(self) -> dict[str, int]:
        """Bytes resident per component, then the process (musicgen.models.memory)."""
        return memory_report(self.generators, self._mbd, self.device)

    @property
    def codec(self):
        """The 32 kHz EnCodec shared by every MusicGen model; serves encode-decode and MBD."""
        return next(iter(self.generators.values())).compression_model

    @property
    def mbd(self) -> MultiBandDiffusion:
        """MultiBand Diffusion, loaded on first use and then kept."""
        with self._mbd_lock:
            if self._mbd is None:
                self._mbd = load_mbd(self.codec, self.device)
                release_freed_memory()
                log.info("memory with MultiBand Diffusion: %s", format_memory(self.memory_report()))
        return self._mbd


def load_models(
    versions: tuple[str, ...] = GENERATING_VERSIONS,
    device: str | None = None,
    fine_tuned: str | Path | None = None,
    root: Path | None = None,
) -> LoadedModels:
    """Load `versions` once each, sharing EnCodec, T5 and HT-Demucs, and log what is resident.

    The weights are checked first (a fast, clear error, or a download when the operator allows it).
    `fine_tuned`: a fine-tuned LM checkpoint (path or URL) served in place of the base model whose
    architecture it has (see check_fine_tuned).
    """
    root = Path(root) if root else layout.weights_root()
    configured_decoder()  # an operator's typo in MUSICGEN_DECODER fails before minutes of loading
    store.ensure_weights(list(versions), root)
    layout.check_hub(root)  # T5 is read through the Hugging Face cache under the same root
    models = LoadedModels(device=device or best_device())
    models.checkpoints = {version: layout.model_dir(version, root) / layout.LM_FILE for version in versions}
    start = time.perf_counter()
    with fast_loading():
        codecs = load_codecs(versions, models.device, root)
        if fine_tuned is not None:
            path = store.fine_tuned_checkpoint(fine_tuned, root)
            version = check_fine_tuned(path, codecs)
            if version not in versions:
                raise WeightsError(f"the fine-tuned checkpoint {path} replaces {version}, which is not being loaded")
            log.info("serving the fine-tuned checkpoint %s as %s (the base %s is not loaded)", path, version, version)
            models.checkpoints[version] = path
        lms = _in_parallel(functools.partial(load_lm, device=models.device), models.checkpoints)
    release_freed_memory()
    for version, path in models.checkpoints.items():
        name = str(path.parent if path.name == layout.LM_FILE else path)  # get_pretrained's name: the folder
        models.generators[version] = assemble(name, codecs[version], lms[version])
        models.decoder(version)  # chosen (and on CUDA checked) now, at setup
    log.info("loaded %s on %s in %.1f s", ", ".join(versions), models.device, time.perf_counter() - start)
    log.info("memory after setup: %s", format_memory(models.memory_report()))
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
    log.info("loaded the LM %s in %.1f s", path, time.perf_counter() - start)
    return lm


def load_codecs(versions: tuple[str, ...], device: str, root: Path) -> dict[str, torch.nn.Module]:
    """Each version's EnCodec, loaded once per distinct file (the released ones are all the same)."""
    codecs: dict[str, torch.nn.Module] = {}
    loaded: dict[Path, torch.nn.Module] = {}
    for version in versions:
        path = layout.model_dir(version, root) / layout.CODEC_FILE
        same = next((codec for other, codec in loaded.items() if _same_file(other, path, root)), None)
        if same is None:
            start = time.perf_counter()
            with skipping_random_init():
                same = loaded[path] = loaders.load_compression_model(str(path.parent), device=device)
            log.info("loaded the EnCodec %s in %.1f s", path, time.perf_counter() - start)
        codecs[version] = same
    return codecs


def assemble(name: str, codec: torch.nn.Module, lm: torch.nn.Module) -> MusicGen:
    """What `MusicGen.get_pretrained` builds from a loaded LM and EnCodec, melody settings included."""
    if "self_wav" in lm.condition_provider.conditioners:
        lm.condition_provider.conditioners["self_wav"].match_len_on_eval = True
        lm.condition_provider.conditioners["self_wav"]._use_masking = False
    return MusicGen(name, codec, lm)


def _same_file(a: Path, b: Path, root: Path) -> bool:
    """Whether two checkpoint files hold the same bytes: the downloader's records (sha256) when
    both have one, else a byte comparison (under a second for the 236 MB EnCodec)."""
    if a == b:
        return True
    if a.stat().st_size != b.stat().st_size:
        return False
    digests = []
    for path in (a, b):
        record = layout.read_record(path.relative_to(root).as_posix(), root)
        digests.append(record.get("sha256") if record.get("size") == path.stat().st_size else None)
    if None not in digests:
        return digests[0] == digests[1]
    return filecmp.cmp(a, b, shallow=False)


def _in_parallel(load: Callable[[Path], torch.nn.Module], paths: dict[str, Path]) -> dict[str, torch.nn.Module]:
    """load(path) for every version at once, one thread each: reading one checkpoint overlaps
    with building and copying the other."""
    with ThreadPoolExecutor(max_workers=len(paths), thread_name_prefix="load") as pool:
        futures = {version: pool.submit(load, path) for version, path in paths.items()}
        return {version: future.result() for version, future in futures.items()}


def load_mbd(codec, device: str, path: Path | None = None) -> MultiBandDiffusion:
    """MultiBand Diffusion for 32 kHz MusicGen tokens, over the already loaded EnCodec.

    What `MultiBandDiffusion.get_mbd_musicgen()` does, from the weights root instead of the hub.
    """
    path = path or layout.mbd_path()
    if not path.is_file():
        store.check_present(["mbd"])
    start = time.perf_counter()
    try:
        with torch.serialization.safe_globals(MBD_SAFE_GLOBALS):
            models, processors, cfgs = load_diffusion_models(str(path), device=device)
    except pickle.UnpicklingError as error:
        raise WeightsError(
            f"{path} holds objects outside the MultiBand Diffusion allow-list; refusing to unpickle them: {error}"
        ) from None
    processes = [
        DiffusionProcess(
            model=model, noise_schedule=NoiseSchedule(**cfg.schedule, sample_processor=processor, device=device)
        )
        for model, processor, cfg in zip(models, processors, cfgs, strict=True)
    ]
    log.info("loaded MultiBand Diffusion on %s in %.1f s", device, time.perf_counter() - start)
    return MultiBandDiffusion(DPs=processes, codec_model=codec)
