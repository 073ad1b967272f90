"""Training low-rank adapters: each target weight of every layer becomes W + (alpha / r) B A.

The base weights are frozen (requires_grad off, their dtype as loaded); A ("down", [r, in]) starts
random (Kaiming-uniform, as nn.Linear and peft initialise it) and B ("up", [out, r]) at zero, so
training starts from the base model exactly. torch.nn.utils.parametrize puts the update in place
of the weight, so audiocraft's own modules (and its activation checkpointing) run unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from musicgen.tokens.adapters import TARGETS

ALPHA_PER_RANK = 1.0  # alpha = rank: the update is B A unscaled, whatever the rank (documented)


class LowRankUpdate(nn.Module):
    """A parametrization: weight [out, in] -> weight + scaling * up @ down."""

    def __init__(self, weight: torch.Tensor, rank: int, scaling: float):
        super().__init__()
        out, inner = weight.shape
        self.down = nn.Parameter(torch.empty(rank, inner, dtype=torch.float32, device=weight.device))
        self.up = nn.Parameter(torch.zeros(out, rank, dtype=torch.float32, device=weight.device))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
        self.scaling = scaling

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.up @ self.down * self.scaling).to(weight.dtype)


def attach(lm: nn.Module, rank: int) -> dict[tuple[int, str], LowRankUpdate]:
    """Freeze `lm` and put a rank-`rank` update on every target weight of its transformer layers
    (drawn from torch's generator: seed first). Returns them by (layer, target)."""
    lm.requires_grad_(False)
    alpha = ALPHA_PER_RANK * rank
    updates = {}
    for index, layer in enumerate(lm.transformer.layers):
        for target, name in TARGETS.items():
            owner_name, _, parameter = name.rpartition(".")
            owner = layer.get_submodule(owner_name)
            update = LowRankUpdate(getattr(owner, parameter), rank, alpha / rank)
            parametrize.register_parametrization(owner, parameter, update, unsafe=True)
            updates[index, target] = update
    return updates


def trained_pairs(
    updates: dict[tuple[int, str], LowRankUpdate],
) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    """The trained (down, up) of every update."""
    return {key: (update.down.detach(), update.up.detach()) for key, update in updates.items()}


def trainable_parameters(rank: int, layers: int, shapes: list[tuple[int, int]]) -> int:
    """The parameters rank-`rank` adapters add to `layers` layers whose target weights have `shapes`."""
    return layers * sum(rank * (out + inner) for out, inner in shapes)
