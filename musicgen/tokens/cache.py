"""Key/value caches allocated once and written in place.

KVCache: per layer, keys and values [B, heads, length, head_dim] for every position of a window
(prefix + pattern steps), one allocation for all layers. CrossAttentionCache: per layer, the keys
and values of the cross-attention source (the text condition), computed once per window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class KVCache:
    """Every layer's self-attention keys and values for `length` positions, plus the positional
    embedding table of those positions (the same values the stock transformer adds per step)."""

    def __init__(
        self,
        layers: int,
        batch: int,
        heads: int,
        length: int,
        head_dim: int,
        positions: torch.Tensor,
        dtype: torch.dtype,
        zeroed: bool,
    ):
        """positions: [length, dim] in the embeddings' dtype; dtype: the keys' and values' (what the
        projections give: float16 under a GPU's autocast, while the embeddings stay float32).
        zeroed: for attention over the whole cache with a mask (a masked position is still
        multiplied by 0, and 0 * NaN is NaN); the eager pass reads only what it wrote."""
        self.length = length
        device = positions.device
        shape = (layers, 2, batch, heads, length, head_dim)
        self.storage = (torch.zeros if zeroed else torch.empty)(shape, dtype=dtype, device=device)
        self.keys = list(self.storage[:, 0].unbind(0))
        self.values = list(self.storage[:, 1].unbind(0))
        self.positions = positions  # [length, dim]
        self.slots = torch.arange(length, device=device)

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, h, T, d] at positions start..start+T-1 of `layer`; return views of that
        layer's keys and values for positions 0..start+T-1 (no copy)."""
        end = start + k.shape[2]
        keys, values = self.keys[layer], self.values[layer]
        keys.narrow(2, start, k.shape[2]).copy_(k)
        values.narrow(2, start, v.shape[2]).copy_(v)
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)

    @property
    def batch(self) -> int:
        return self.storage.shape[2]

    def clear(self) -> None:
        self.storage.zero_()

    def copy_into(self, other: KVCache, written: int, rows: slice = slice(None)) -> KVCache:
        """This cache's first `written` positions, every layer, into `rows` of `other`'s batch
        (a window's prefill moved into the cache its steps run in); returns `other`."""
        other.storage[:, :, rows, :, :written] = self.storage[:, :, :, :, :written]
        return other


@dataclass
class CrossAttentionCache:
    """Per layer, the cross-attention keys and values [B, h, T_text, d]; `mask` [1, 1, 1, T] marks
    the real positions when the tensors are padded to a fixed length (static shapes), else None."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor | None = None

    @classmethod
    def padded(
        cls, layers: int, batch: int, heads: int, length: int, head_dim: int, dtype: torch.dtype, device
    ) -> CrossAttentionCache:
        """A zeroed cache of `length` positions (filled later with fill()); its mask shows the
        first position, so attention over it is defined before the first fill."""
        keys = [torch.zeros(batch, heads, length, head_dim, dtype=dtype, device=device) for _ in range(layers)]
        values = [torch.zeros_like(k) for k in keys]
        mask = torch.zeros(1, 1, 1, length, dtype=torch.bool, device=device)
        mask[..., :1] = True
        return cls(keys, values, mask)

    def fill(self, source: CrossAttentionCache) -> None:
        """Copy `source`'s keys and values into this padded cache (in place) and mask the rest."""
        length = source.keys[0].shape[2]
        for mine, theirs in zip(self.keys + self.values, source.keys + source.values, strict=True):
            mine.zero_()
            mine[:, :, :length] = theirs
        self.mask.zero_()
        self.mask[..., :length] = True
