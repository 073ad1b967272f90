"""predict.py, streaming/predict.py and train.py as Cog loads them: the Predictor classes, the train
function, and their inputs in order."""

from __future__ import annotations

import importlib.util
import inspect
import sys
import types
import typing
from pathlib import Path

from musicgen.serving.cog_yaml import STREAMING_DIR
from musicgen.settings import REPOSITORY

PREDICT_FILE = REPOSITORY / "predict.py"
STREAMING_FILE = STREAMING_DIR / "predict.py"
TRAIN_FILE = REPOSITORY / "train.py"


def _load_module(path: Path, name: str) -> types.ModuleType:
    """Import a file by path, as Cog does."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


def load_predictor_class(path: Path = PREDICT_FILE) -> type:
    """predict.py's Predictor class."""
    return _load_module(path, "predict").Predictor


def load_streaming_predictor_class(path: Path = STREAMING_FILE) -> type:
    """streaming/predict.py's Predictor class (its predict() yields the audio as it is made)."""
    return _load_module(path, "streaming_predict").Predictor


def load_train_function(path: Path = TRAIN_FILE) -> typing.Callable:
    """train.py's train function."""
    return _load_module(path, "train").train


def input_fields(entry: type | typing.Callable) -> dict[str, tuple[type, object]]:
    """The inputs of a Predictor class's predict() or of a train function, in declaration order:
    name -> (value type, default)."""
    function = entry.predict if isinstance(entry, type) else entry
    fields = {}
    hints = typing.get_type_hints(function)
    for name, parameter in inspect.signature(function).parameters.items():
        if name == "self":
            continue
        value_type = hints[name]
        if typing.get_origin(value_type) in (typing.Union, types.UnionType):
            value_type = next(arg for arg in typing.get_args(value_type) if arg is not type(None))
        fields[name] = (value_type, getattr(parameter.default, "default", parameter.default))
    return fields
