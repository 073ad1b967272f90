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
    """One step's logits [2B or B, K, card] -> the guided logits [B, K, card].

    With guidance the first B rows are conditional, the last B unconditional:
    uncond + (cond - uncond) * cfg_coef (also for a coefficient of 0 or 1, as audiocraft computes it).
    """
    if cfg_coef is None:
        return logits
    cond, uncond = logits.split(batch, dim=0)
    return uncond + (cond - uncond) * cfg_coef


def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, K, card] -> [B, K, 1]: top-p, top-k or plain sampling at `temp`, or greedy.

    Dividing by a temperature of exactly 1 changes no value, so it is skipped. `generator`: the
    request's own (batched decoding); None draws from torch's global one, as audiocraft does.
    """
    if sampling.use_sampling and sampling.temp > 0.0:
        probs = torch.softmax(logits if sampling.temp == 1.0 else logits / sampling.temp, dim=-1)
        if sampling.top_p > 0.0:
            return sample_top_p(probs, sampling.top_p, generator)
        if sampling.top_k > 0:
            return sample_top_k(probs, sampling.top_k, generator)
        return utils.multinomial(probs, num_samples=1, generator=generator)
    return torch.argmax(logits, dim=-1, keepdim=True)


def sample_top_p(probs: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """audiocraft's utils.sample_top_p, operation for operation (so the same draws from torch's
    global generator for None), drawing from `generator`, which audiocraft's does not take."""
    probs_sort, probs_idx = torch.sort(probs, dim=-1, descending=True)
    probs_sum = torch.cumsum(probs_sort, dim=-1)
    probs_sort *= (~(probs_sum - probs_sort > p)).float()
    probs_sort.div_(probs_sort.sum(dim=-1, keepdim=True))
    return torch.gather(probs_idx, -1, utils.multinomial(probs_sort, num_samples=1, generator=generator))


def sample_top_k(probs: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """audiocraft's utils.sample_top_k, operation for operation, except how the k-th largest
    probability is found: by selection (torch.kthvalue, the (n - k + 1)-th smallest) instead of a
    sorted top-k. It is the same element, hence the same value, ties included, at a third of the cost."""
    min_value_top_k = torch.kthvalue(probs, probs.shape[-1] - k + 1, dim=-1, keepdim=True).values
    probs *= (probs >= min_value_top_k).float()
    probs.div_(probs.sum(dim=-1, keepdim=True))
    return utils.multinomial(probs, num_samples=1, generator=generator)
