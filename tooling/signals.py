"""Test signals the tests and the benchmarks send as audio."""

from __future__ import annotations

import numpy as np


def scale(seconds: float, rate: int, base: float = 220.0, rising: bool = True) -> np.ndarray:
    """A scale of sines from `base` Hz, two semitone steps per second (down when not `rising`),
    at amplitude 0.4: float64 samples [T]."""
    t = np.arange(round(seconds * rate)) / rate
    steps = np.floor(t * 2) * (1 if rising else -1)
    return 0.4 * np.sin(2 * np.pi * np.cumsum(base * 2 ** (steps / 12)) / rate)
