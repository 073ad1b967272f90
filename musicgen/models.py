"""Load each model once, on the best device and dtype, and say what is resident."""

from __future__ import annotations

import collections
import logging
import pickle
import threading
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import omegaconf
import torch

# isort: off
from musicgen import offline  # noqa: F401  (configures the hub cache before audiocraft loads)
from audiocraft.models import MultiBandDiffusion, MusicGen
from audiocraft.models.loaders import load_diffusion_models
from audiocraft.models.multibanddiffusion import DiffusionProcess
from audiocraft.modules.diffusion_schedule import NoiseSchedule

# isort: on
from musicgen import weights
from musicgen.errors import WeightsError

log = logging.getLogger(__name__)

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
    """CUDA when present (the LM then runs in float16), else CPU in float32."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class LoadedModels:
    """Everything resident for serving: one MusicGen per model_version, on one device."""

    device: str
    generators: dict[str, MusicGen] = field(default_factory=dict)
    _mbd: MultiBandDiffusion | None = None
    _mbd_lock: threading.Lock = field(default_factory=threading.Lock)

    def generator(self, version: str) -> MusicGen:
        return self.generators[version]

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
        return self._mbd


def load_generator(version: str, device: str, root: Path | None = None) -> MusicGen:
    """audiocraft's own loader on a local checkpoint folder, with get_pretrained's melody settings."""
    start = time.perf_counter()
    model = MusicGen.get_pretrained(str(weights.model_dir(version, root)), device=device)
    log.info("loaded %s on %s in %.1f s", version, device, time.perf_counter() - start)
    return model


def load_models(versions: tuple[str, ...] = GENERATING_VERSIONS, device: str | None = None) -> LoadedModels:
    """Check every file first (fast, clear error), then load each model once."""
    weights.check_present(list(versions))
    models = LoadedModels(device=device or best_device())
    for version in versions:
        models.generators[version] = load_generator(version, models.device)
    return models


def load_mbd(codec, device: str, path: Path | None = None) -> MultiBandDiffusion:
    """MultiBand Diffusion for 32 kHz MusicGen tokens, over the already loaded EnCodec.

    What `MultiBandDiffusion.get_mbd_musicgen()` does, from the weights root instead of the hub.
    """
    path = path or weights.mbd_path()
    if not path.is_file():
        weights.check_present(["mbd"])
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
