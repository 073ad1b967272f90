"""Guidance and sampling of the next token, exactly as `LMModel._sample_next_token` does them.

The same operations in the same order, through audiocraft's own sample_top_k / sample_top_p /
multinomial, so the same logits draw the same tokens from torch's generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from audiocraft.utils import utils


@dataclass(frozen=True)
class Sampling:
    """The generation settings MusicGen.set_generation_params stores (model.generation_params)."""

    use_sampling: bool = True
    temp: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    cfg_coef: float = 3.0

    @classmethod
    def of(cls, params: dict) -> Sampling:
        return cls(params["use_sampling"], params["temp"], params["top_k"], params["top_p"], params["cfg_coef"])


def guided(logits: torch.Tensor, batch: int, cfg_coef: float | None) -> torch.Tensor:
    """[2B or B, K, S, card] -> the last step's guided logits [B, K, card].

    With guidance the first B rows are conditional, the last B unconditional:
    uncond + (cond - uncond) * cfg_coef (also for a coefficient of 0 or 1, as audiocraft computes it).
    """
    logits = logits[:, :, -1:]
    if cfg_coef is not None:
        cond, uncond = logits.split(batch, dim=0)
        logits = uncond + (cond - uncond) * cfg_coef
    return logits.permute(0, 1, 3, 2)[..., -1]


def next_token(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """[B, K, card] -> [B, K, 1]: top-p, top-k or plain sampling at `temp`, or greedy."""
    if sampling.use_sampling and sampling.temp > 0.0:
        probs = torch.softmax(logits / sampling.temp, dim=-1)
        if sampling.top_p > 0.0:
            return utils.sample_top_p(probs, p=sampling.top_p)
        if sampling.top_k > 0:
            return utils.sample_top_k(probs, k=sampling.top_k)
        return utils.multinomial(probs, num_samples=1)
    return torch.argmax(logits, dim=-1, keepdim=True)
