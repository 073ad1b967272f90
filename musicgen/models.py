"""Load each model once, on the best device and dtype, and say what is resident."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

# isort: off
from musicgen import offline  # noqa: F401  (configures the hub cache before audiocraft loads)
from audiocraft.models import MusicGen

# isort: on
from musicgen import weights

log = logging.getLogger(__name__)

GENERATING_VERSIONS = ("melody", "large")  # loaded at setup; encode-decode reuses their codec


def best_device() -> str:
    """CUDA when present (the LM then runs in float16), else CPU in float32."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class LoadedModels:
    """Everything resident for serving: one MusicGen per model_version, on one device."""

    device: str
    generators: dict[str, MusicGen] = field(default_factory=dict)

    def generator(self, version: str) -> MusicGen:
        return self.generators[version]

    @property
    def codec(self):
        """The 32 kHz EnCodec shared by every MusicGen model; serves encode-decode."""
        return self.generators["melody"].compression_model


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
