"""Helpers shared by the test modules (pytest puts this folder on sys.path)."""

from __future__ import annotations

import inspect
from pathlib import Path


def predict_with_defaults(predictor, **inputs) -> Path:
    """predictor.predict() with every input not given at its declared default, as Cog fills them in."""
    parameters = inspect.signature(predictor.predict).parameters
    values = {name: parameter.default.default for name, parameter in parameters.items()}
    return Path(predictor.predict(**{**values, **inputs}))
