"""MultiBand Diffusion for MusicGen's 32 kHz tokens, loaded from the weights root with safe unpickling."""

from __future__ import annotations

import collections
import logging
import pickle
import time
import typing
from pathlib import Path

import omegaconf
import torch
from audiocraft.models import MultiBandDiffusion
from audiocraft.models.loaders import load_diffusion_models
from audiocraft.models.multibanddiffusion import DiffusionProcess
from audiocraft.modules.diffusion_schedule import NoiseSchedule

from musicgen.errors import WeightsError
from musicgen.weights import layout, store

log = logging.getLogger(__name__)

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


def load_mbd(codec, device: str, root: Path) -> MultiBandDiffusion:
    """MultiBand Diffusion for 32 kHz MusicGen tokens, over the already loaded EnCodec.

    What `MultiBandDiffusion.get_mbd_musicgen()` does, from the weights root `root` instead of the hub.
    """
    path = layout.mbd_path(root)
    if not path.is_file():
        store.check_present(["mbd"], root)
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
