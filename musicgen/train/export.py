"""A fine-tuned LM as audiocraft's LM export, the format setup(weights=...) serves, with its training recorded.

The package is what `audiocraft.utils.export.export_lm` writes (and the released `state_dict.bin`
holds): {'best_state': the state dict in float16, 'xp.cfg': the config as YAML, 'version',
'exported': True}. The config is the base checkpoint's own, with the classifier-free-guidance
dropout the fine-tune used, and one more top-level entry, `fine_tune`, recording the training
inputs and what came of them (audiocraft's builders read only the entries they know).
"""

from __future__ import annotations

import typing as tp
from pathlib import Path

import audiocraft
import omegaconf
import torch

from musicgen import atomic_files

RECORD_KEY = "fine_tune"  # the config entry holding the training record


def export_package(state: dict[str, torch.Tensor], config: dict | omegaconf.DictConfig, half: bool) -> dict:
    """What audiocraft.utils.export writes for a trained model (`half`: float tensors in float16, as
    the released LMs; the released EnCodec is float32)."""
    if half:
        state = {name: tensor.half() if tensor.is_floating_point() else tensor for name, tensor in state.items()}
    return {
        "best_state": state,
        "xp.cfg": omegaconf.OmegaConf.to_yaml(omegaconf.OmegaConf.create(config)),
        "version": audiocraft.__version__,
        "exported": True,
    }


def save(obj: tp.Any, path: Path) -> Path:
    """torch.save `obj` to `path` atomically (files.atomic_path). The staged file has `path`'s own
    name, and torch names the archive inside the file after it, so the bytes do not vary."""
    with atomic_files.atomic_path(path) as staged:
        torch.save(obj, staged)
    return Path(path)


def write_fine_tuned(
    lm: torch.nn.Module, base_config: omegaconf.DictConfig, cfg_p: float, record: dict, dest: Path
) -> Path:
    """Write the fine-tuned `lm` to `dest`: the base config with the training's CFG dropout and
    `record` (plain values) under RECORD_KEY."""
    config = base_config.copy()
    with omegaconf.open_dict(config):
        config.classifier_free_guidance.training_dropout = cfg_p
        config[RECORD_KEY] = record
    state = {name: tensor.detach().cpu() for name, tensor in lm.state_dict().items()}
    return save(export_package(state, config, half=True), dest)


def read_record(package: dict) -> dict | None:
    """The training record of an exported fine-tune (None for a checkpoint that has none)."""
    config = omegaconf.OmegaConf.create(package["xp.cfg"])
    record = config.get(RECORD_KEY)
    return None if record is None else omegaconf.OmegaConf.to_container(record)
