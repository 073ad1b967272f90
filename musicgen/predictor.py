"""predict.py as Cog loads it: the Predictor class, and its inputs in declaration order."""

from __future__ import annotations

import importlib.util
import inspect
import sys
import types
import typing
from pathlib import Path

from musicgen.weights.layout import REPOSITORY

PREDICT_FILE = REPOSITORY / "predict.py"


def load_predictor_class(path: Path = PREDICT_FILE) -> type:
    """Import predict.py by path, as Cog does, and return its Predictor class."""
    spec = importlib.util.spec_from_file_location("predict", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("predict", module)
    spec.loader.exec_module(module)
    return module.Predictor


def input_fields(predictor_class: type) -> dict[str, tuple[type, object]]:
    """The predict() inputs in declaration order: name -> (value type, default)."""
    fields = {}
    hints = typing.get_type_hints(predictor_class.predict)
    for name, parameter in inspect.signature(predictor_class.predict).parameters.items():
        if name == "self":
            continue
        value_type = hints[name]
        if typing.get_origin(value_type) in (typing.Union, types.UnionType):
            value_type = next(arg for arg in typing.get_args(value_type) if arg is not type(None))
        fields[name] = (value_type, getattr(parameter.default, "default", parameter.default))
    return fields
