"""The generation modes as small functions over one shared pipeline: seed, tokens, decode."""

from __future__ import annotations

import random

import numpy as np
import torch

# isort: off
from musicgen import offline  # noqa: F401  (configures the hub cache before audiocraft loads)
from audiocraft.models import MusicGen

# isort: on
from musicgen.errors import InputError
from musicgen.models import LoadedModels
from musicgen.request import Request

EXTEND_STRIDE = 18  # seconds; past 30 s each new window re-uses the last 12 s as its prompt


def seed_everything(seed: int) -> None:
    """Seed every generator sampling may touch, so the same seed gives the same tokens."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def set_generation_params(model: MusicGen, request: Request, duration: float) -> None:
    """Sampling settings exactly as a user of audiocraft passes them; temperature 0 is greedy."""
    model.set_generation_params(
        use_sampling=request.temperature > 0,
        top_k=request.top_k,
        top_p=request.top_p,
        temperature=request.temperature,
        duration=duration,
        cfg_coef=request.classifier_free_guidance,
        extend_stride=EXTEND_STRIDE,
    )


def text_to_music(model: MusicGen, request: Request) -> tuple[torch.Tensor, torch.Tensor]:
    """Text only. Returns (audio [1, C, T], tokens [1, K, S])."""
    set_generation_params(model, request, request.duration)
    return model.generate([request.prompt], return_tokens=True)


def generate(request: Request, models: LoadedModels, seed: int) -> tuple[torch.Tensor, int]:
    """Run the request's mode; return (audio [C, T] float32 on CPU, sample rate in Hz)."""
    if request.mode != "text":
        raise InputError(f"{request.mode} is not implemented yet; only text-to-music is available.")
    if request.multi_band_diffusion:
        raise InputError("multi_band_diffusion=True is not implemented yet.")
    model = models.generator(request.model_version)
    if request.top_k > model.lm.card:
        raise InputError(f"top_k={request.top_k} is out of range; it must be between 0 and {model.lm.card}.")
    seed_everything(seed)
    with torch.inference_mode():
        wav, _tokens = text_to_music(model, request)
    return wav[0].float().cpu(), model.sample_rate
