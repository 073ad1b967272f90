"""cog.yaml's predict and train references ("predict.py:Predictor", "train.py:train"), read as cog reads them.

cog 0.23.1 (pkg/config/parse.go, validate.go): `run:` and `predict:` name the same thing and only one
may be set; `train:` is optional; each must look like "file.py:Name".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from musicgen.settings import REPOSITORY

COG_YAML = REPOSITORY / "cog.yaml"
# The streaming model (streaming/predict.py): its own cog.yaml and committed .cog/, built from the
# repository's root (`cog build -f streaming/cog.yaml`), served from its folder by `serve --stream`.
STREAMING_DIR = REPOSITORY / "streaming"


@dataclass(frozen=True)
class CogRefs:
    """The targets `cog build` generates a schema for; None where cog.yaml names none."""

    predict: str | None  # `predict:` (or `run:`), e.g. "predict.py:Predictor": POST /predictions
    train: str | None = None  # `train:`, e.g. "train.py:train": POST /trainings


def cog_refs(config_file: Path = COG_YAML) -> CogRefs:
    """The references in `config_file`; ValueError when cog would refuse them."""
    config = yaml.safe_load(Path(config_file).read_text()) or {}
    run, predict, train = (config.get(key) or None for key in ("run", "predict", "train"))
    if run and predict:
        raise ValueError(f"{config_file}: only one of run or predict can be set")
    refs = CogRefs(predict=run or predict, train=train)
    for key, ref, example in (
        ("predict", refs.predict, "predict.py:Predictor"),
        ("train", refs.train, "train.py:train"),
    ):
        if ref is not None and (not isinstance(ref, str) or len(ref.split(".py:")) != 2):
            raise ValueError(f"{config_file}: `{key}:` must be in the form '{example}', got {ref!r}")
    if refs.predict is None and refs.train is None:
        raise ValueError(f"{config_file}: no predict or train reference found")
    return refs


def split_ref(ref: str) -> tuple[str, str]:
    """Split "train.py:train" into ("train.py", "train"): the file (in the model folder) and the name in it."""
    file_name, _, name = ref.partition(":")
    if not file_name.endswith(".py") or not name:
        raise ValueError(f"reference {ref!r} must look like 'predict.py:Predictor'")
    return file_name, name


def ref_from(folder: Path, ref: str, root: Path = REPOSITORY) -> str:
    """`ref` (relative to `root`, cog's project folder) as seen from `folder`: coglet resolves a
    predictor's file against its working directory."""
    file_name, name = split_ref(ref)
    return f"{(root / file_name).relative_to(folder).as_posix()}:{name}"
