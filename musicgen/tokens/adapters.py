"""Low-rank adapters in the step: how each form of the step adds a request's adapter to its layers.

An adapter (musicgen.lora) holds, for every layer and each of four linear maps (TARGETS), a pair
A [r, in] ("down") and B [out, r] ("up"). A request's rows compute y = W x + s B (A x): unmerged,
the base weights untouched, s its scale (the adapter's alpha / rank times the request's
lora_scale). Each form of the step wraps the linear maps of its bound layers (layer.BoundLayer),
and layer.run_layers runs them as it runs any linear map:

- `whole`: every row the same adapter (a window's prefill, the eager step of one window).
- `per_slot`: the CPU's batched step: each occupied slot's two rows get its own adapter's update,
  computed on those two rows alone (the same shapes whatever the neighbours hold, so no request's
  numbers depend on theirs); a slot without one gets nothing added.
- SlotAdapters: the masked step's static buffers, S slots of rank up to `rank` (an adapter of a
  lower rank is zero-padded), which the captured CUDA graph reads as inputs: putting a request's
  adapter in a slot copies it in, and nothing is captured again. A slot without one keeps its
  base numbers exactly (torch.where, not + 0).
"""

from __future__ import annotations

import typing as tp
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from musicgen.tokens.layer import BoundLayer, Linear

# Our name of each adapted linear map -> the LM's parameter it updates (per layer, audiocraft's names).
TARGETS = {
    "qkv": "self_attn.in_proj_weight",  # the packed query, key and value projection [3 dim, dim]
    "out_proj": "self_attn.out_proj.weight",  # [dim, dim]
    "linear1": "linear1.weight",  # the feed-forward block's first map [hidden, dim]
    "linear2": "linear2.weight",  # and its second [dim, hidden]
}


def target_weight(layer: torch.nn.Module, target: str) -> torch.Tensor:
    """The LM layer's weight that `target` adapts."""
    return layer.get_parameter(TARGETS[target])


@dataclass(frozen=True, eq=False)
class LowRank:
    """An adapter's pairs on the step's device and dtype: (layer, target) -> (down [r, in], up [out, r])."""

    pairs: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]
    rank: int
    scaling: float  # alpha / rank, as it was trained

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for pair in self.pairs.values() for t in pair)


@dataclass(frozen=True)
class Adapted:
    """A request's adapter and the scale its rows get (never 0: scale 0 is the base model, no adapter)."""

    low_rank: LowRank
    scale: float  # low_rank.scaling * lora_scale

    @classmethod
    def of(cls, low_rank: LowRank | None, lora_scale: float) -> Adapted | None:
        if low_rank is None or lora_scale == 0:
            return None
        return cls(low_rank, low_rank.scaling * lora_scale)


def low_rank_update(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """B (A x): x [..., in] -> [..., out]."""
    return F.linear(F.linear(x, down), up)


def _adapt(layers: list[BoundLayer], wrap: tp.Callable[[int, str, Linear], Linear]) -> list[BoundLayer]:
    """The layers with each target linear map replaced by wrap(layer index, target, the base map)."""
    return [
        layer._replace(**{target: wrap(index, target, getattr(layer, target)) for target in TARGETS})
        for index, layer in enumerate(layers)
    ]


def whole(layers: list[BoundLayer], adapted: Adapted) -> list[BoundLayer]:
    """Every row adapted by `adapted`."""

    def wrap(index: int, target: str, base: Linear) -> Linear:
        down, up = adapted.low_rank.pairs[index, target]
        scale = adapted.scale
        return lambda x: base(x) + low_rank_update(x, down, up) * scale

    return _adapt(layers, wrap)


def per_slot(layers: list[BoundLayer], slots: list[tuple[slice, Adapted]]) -> list[BoundLayer]:
    """Each (step rows, adapter) of `slots`: those rows adapted by it, computed on them alone."""
    if not slots:
        return layers

    def wrap(index: int, target: str, base: Linear) -> Linear:
        parts = [(rows, *adapted.low_rank.pairs[index, target], adapted.scale) for rows, adapted in slots]

        def linear(x: torch.Tensor) -> torch.Tensor:
            y = base(x)
            for rows, down, up, scale in parts:
                y[rows] += low_rank_update(x[rows], down, up) * scale
            return y

        return linear

    return _adapt(layers, wrap)


class SlotAdapters:
    """Static adapter buffers for `slots` slots of `rows_per_slot` rows each, rank up to `rank`:
    what the masked step reads; set() puts a request's adapter (or none) in a slot."""

    def __init__(self, lm, slots: int, rows_per_slot: int, rank: int, dtype: torch.dtype, device):
        self.slots, self.rows, self.rank = slots, rows_per_slot, rank
        self.down: dict[tuple[int, str], torch.Tensor] = {}
        self.up: dict[tuple[int, str], torch.Tensor] = {}
        for index, layer in enumerate(lm.transformer.layers):
            for target in TARGETS:
                out, inner = target_weight(layer, target).shape
                self.down[index, target] = torch.zeros(slots, rank, inner, dtype=dtype, device=device)
                self.up[index, target] = torch.zeros(slots, out, rank, dtype=dtype, device=device)
        self.scale = torch.zeros(slots, 1, 1, dtype=dtype, device=device)
        self.active = torch.zeros(slots, 1, 1, dtype=torch.bool, device=device)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.down.values(), *self.up.values()))

    def takes(self, adapted: Adapted) -> bool:
        return adapted.low_rank.rank <= self.rank

    def set(self, slot: int, adapted: Adapted | None) -> None:
        """`slot`'s rows adapted by `adapted` from the next step (None: the base numbers)."""
        self.active[slot] = adapted is not None
        self.scale[slot] = 0.0 if adapted is None else adapted.scale
        if adapted is None:
            return  # an inactive slot's rows are its base numbers whatever its buffers hold (torch.where)
        for key, down in self.down.items():
            up = self.up[key]
            down[slot].zero_()  # a lower rank than the buffers': the rest stays zero
            up[slot].zero_()
            mine_down, mine_up = adapted.low_rank.pairs[key]
            rank = mine_down.shape[0]
            down[slot, :rank].copy_(mine_down)
            up[slot, :, :rank].copy_(mine_up)

    def layers(self, layers: list[BoundLayer]) -> list[BoundLayer]:
        """`layers` reading these buffers: the same shapes at every step, whatever the slots hold."""
        slots, rows = self.slots, self.rows
        scale, active = self.scale, self.active

        def wrap(index: int, target: str, base: Linear) -> Linear:
            down_t, up_t = self.down[index, target].transpose(1, 2), self.up[index, target].transpose(1, 2)

            def linear(x: torch.Tensor) -> torch.Tensor:
                y = base(x)
                grouped = y.view(slots, rows, -1)
                update = torch.bmm(torch.bmm(x.view(slots, rows, -1), down_t), up_t) * scale
                return torch.where(active, grouped + update.to(y.dtype), grouped).view(y.shape)

            return linear

        return _adapt(layers, wrap)
