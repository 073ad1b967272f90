"""The base model of a fine-tune: its LM with its training settings, its EnCodec, HT-Demucs.

The LM is float32 (its weights train), except a frozen one (LoRA) on a GPU: float16, as stored.

Loaded through the serving loaders' cold-start hooks (the checkpoint memory-mapped, random
initialisation skipped, T5 and HT-Demucs loaded once) but built with audiocraft's
`builders.get_lm_model` itself: `load_lm_model` makes the transformer float16 on a GPU (no float32
weights to train), and serving's melody settings (`match_len_on_eval`) are inference behaviour. The
LM keeps its checkpoint's own conditioner settings, as audiocraft's training builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import omegaconf
import torch
from audiocraft.models import builders, loaders
from audiocraft.models.lm import LMModel
from demucs.apply import apply_model

from musicgen.audio import levels
from musicgen.models.checkpoints import read_lm_checkpoint
from musicgen.models.cold_start import SharedModules, fast_loading, skipping_random_init
from musicgen.versions import GENERATING
from musicgen.weights import layout, store

HTDEMUCS = "htdemucs"  # the stem model the melody conditioner uses, and drop_vocals
VOCALS = "vocals"
# Config entries of a training run's data pipeline that a built model must not read (audiocraft's
# load_lm_model removes the same ones).
TRAINING_ONLY_KEYS = (
    "conditioners.self_wav.chroma_stem.cache_path",
    "conditioners.args.merge_text_conditions_p",
    "conditioners.args.drop_desc_p",
)


@dataclass
class TrainingModel:
    """What a fine-tune of one model_version needs, on one device."""

    version: str
    lm: LMModel  # float32, its checkpoint's training settings; the only part that trains
    codec: torch.nn.Module  # EnCodec (for a stereo LM, audiocraft's interleaving of it)
    config: omegaconf.DictConfig  # the base LM's config, as its checkpoint states it
    base: Path  # the base LM checkpoint
    device: str
    shared: SharedModules  # T5 and HT-Demucs, loaded once

    @property
    def sample_rate(self) -> int:
        return int(self.codec.sample_rate)

    @property
    def channels(self) -> int:
        return GENERATING[self.version].channels

    @property
    def chroma_conditioner(self) -> torch.nn.Module | None:
        """The melody models' chroma conditioner (None for the text-only ones)."""
        conditioners = self.lm.condition_provider.conditioners
        return conditioners["self_wav"] if "self_wav" in conditioners else None

    @torch.no_grad()
    def tokens(self, wav: torch.Tensor) -> torch.Tensor:
        """EnCodec's tokens of [C, T] audio at the model's rate and channels: [K, frames], int64."""
        codes, scale = self.codec.encode(wav[None].to(self.device))
        assert scale is None, "MusicGen's EnCodec does not rescale"
        return codes[0].cpu()

    @torch.no_grad()
    def chroma(self, wav: torch.Tensor) -> torch.Tensor | None:
        """The melody condition of [C, T] audio as the LM's own chroma conditioner computes it from a
        training segment (HT-Demucs' vocals and other stems, mono, then chroma): [frames, bins]."""
        conditioner = self.chroma_conditioner
        if conditioner is None:
            return None
        mono = wav.mean(dim=0, keepdim=True)[None].to(self.device)  # [1, 1, T]
        return conditioner._compute_wav_embedding(mono, self.sample_rate)[0].float().cpu()

    @torch.no_grad()
    def without_vocals(self, wav: torch.Tensor) -> torch.Tensor:
        """[C, T] audio at the model's rate with HT-Demucs' vocals stem removed (drums, bass, other kept)."""
        demucs = self.shared.demucs.from_pretrained(HTDEMUCS)
        mix = levels.convert(wav, self.sample_rate, demucs.samplerate, demucs.audio_channels)
        stems = apply_model(demucs, mix[None].to(self.device), device=self.device, progress=False)[0]
        keep = [index for index, name in enumerate(demucs.sources) if name != VOCALS]
        instrumental = stems[keep].sum(dim=0).float().cpu()
        return levels.convert(instrumental, demucs.samplerate, self.sample_rate, self.channels)[:, : wav.shape[-1]]


def base_checkpoint(version: str, root: Path) -> Path:
    """The released `version`'s LM checkpoint under the weights root `root` (WeightsError when absent)."""
    store.check_present([version], root)
    layout.check_hub(root)
    return layout.model_dir(version, root) / layout.LM_FILE


def load_for_training(version: str, device: str, root: Path, base: Path, frozen: bool = False) -> TrainingModel:
    """The released `version` under the weights root `root` (its LM checkpoint `base`, from
    base_checkpoint()), ready to fine-tune on `device`. `frozen` (LoRA: only adapters train): on a
    GPU the LM stays float16, as stored."""
    package = read_lm_checkpoint(base)
    config = omegaconf.OmegaConf.create(package["xp.cfg"])
    build = config.copy()
    build.device = device
    build.dtype = "float16" if frozen and device.startswith("cuda") else "float32"
    for key in TRAINING_ONLY_KEYS:
        _delete(build, key)
    shared = SharedModules()
    with fast_loading(shared), skipping_random_init():
        lm = builders.get_lm_model(build)
        lm.load_state_dict(package["best_state"])
        codec = loaders.load_compression_model(str(layout.model_dir(version, root)), device=device)
    lm.cfg = build
    codec = builders.get_wrapped_compression_model(codec, build).eval()
    return TrainingModel(version, lm, codec, config, base, device, shared)


def _delete(config: omegaconf.DictConfig, dotted: str) -> None:
    *parents, name = dotted.split(".")
    node = config
    for part in parents:
        node = node.get(part) if isinstance(node, omegaconf.DictConfig) else None
    if isinstance(node, omegaconf.DictConfig) and name in node:
        with omegaconf.open_dict(node):
            del node[name]
