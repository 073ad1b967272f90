"""How a step's attention reads and writes the key/value cache: the strategies layer.run_layers plugs in.

Self-attention (layer.SelfAttention), by form of the step:
- WindowAttention: a window's prefill, T tokens at start..start+T-1, causal among themselves; reads
  a view of the cache's filled prefix, the very call the stock loop makes (the same numbers).
- TokenAttention: one token per row, every row at one position (the eager step of one window).
- MaskedAttention: one token per row, each row at its own position, over the whole cache with a
  mask: the same shapes whatever the rows hold (the static step a CUDA graph replays, one window's
  or the batch's).
- PerSlotAttention: the CPU's batched step, each slot's two rows over exactly its own positions.

Cross-attention to the text (layer.TextAttention): WholeText (the prefill), TokenText (one token
per row, its padding masked when the text is padded to a fixed length) and PerSlotText.

Shapes: q, k, v [B, heads, T, head_dim]; a step's rows [R, dim]; the prefill's [B, T, dim].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from musicgen.tokens.cache import CrossAttentionCache, KVCache


@dataclass(frozen=True)
class Heads:
    """The attention's geometry, and its three shape operations."""

    heads: int
    head_dim: int
    as_float32: bool  # the LM computes attention in float32 (attention_as_float32)

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim

    def attend(self, q, k, v, **mask) -> torch.Tensor:
        if self.as_float32:
            q, k, v = q.float(), k.float(), v.float()
        return F.scaled_dot_product_attention(q, k, v, **mask)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, (h d)] -> [B, h, T, d] (a view, as einops' rearrange makes it)."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def merge(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[B, h, T, d] -> [B, T, (h d)] in `dtype`."""
        batch, _, length, _ = x.shape
        return x.to(dtype).transpose(1, 2).reshape(batch, length, self.dim)

    def rows(self, attended: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[R, h, 1, d] -> [R, (h d)] in `dtype` (one token per row)."""
        return attended.reshape(attended.shape[0], self.dim).to(dtype)


@dataclass(frozen=True)
class WindowAttention:
    """A window's prefill: projected [B, T, 3 dim] at positions start..start+T-1."""

    heads: Heads
    cache: KVCache
    start: int

    def __call__(self, index: int, projected: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        g = self.heads
        batch, length, _ = projected.shape
        q, k, v = projected.view(batch, length, 3, g.heads, g.head_dim).permute(0, 3, 2, 1, 4).unbind(dim=2)
        keys, values = self.cache.write(index, self.start, k, v)
        return g.merge(g.attend(q, keys, values, is_causal=length > 1), dtype)


@dataclass(frozen=True)
class TokenAttention:
    """One token per row, every row at `position`: projected [R, 3 dim]."""

    heads: Heads
    cache: KVCache
    position: int

    def __call__(self, index: int, projected: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        g = self.heads
        packed = projected.view(projected.shape[0], 3, g.heads, 1, g.head_dim)
        keys, values = self.cache.write(index, self.position, packed[:, 1], packed[:, 2])
        return g.rows(g.attend(packed[:, 0], keys, values), dtype)


@dataclass(frozen=True)
class MaskedAttention:
    """One token per row, row r at positions[r], over the whole cache with the positions after its
    own masked: static shapes (a row's result never depends on the others; a CUDA graph replays it)."""

    heads: Heads
    cache: KVCache
    positions: torch.Tensor  # [R] long
    visible: torch.Tensor  # [R, 1, 1, length] bool
    every_row: torch.Tensor  # arange(R)

    @classmethod
    def of(cls, heads: Heads, cache: KVCache, positions: torch.Tensor) -> MaskedAttention:
        rows = positions.shape[0]
        visible = (cache.slots.view(1, -1) <= positions.view(-1, 1)).view(rows, 1, 1, -1)
        return cls(heads, cache, positions, visible, torch.arange(rows, device=positions.device))

    def __call__(self, index: int, projected: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        g = self.heads
        packed = projected.view(projected.shape[0], 3, g.heads, 1, g.head_dim)
        keys, values = self.cache.keys[index], self.cache.values[index]
        keys[self.every_row, :, self.positions] = packed[:, 1, :, 0]
        values[self.every_row, :, self.positions] = packed[:, 2, :, 0]
        return g.rows(g.attend(packed[:, 0], keys, values, attn_mask=self.visible), dtype)


@dataclass(frozen=True)
class Slot:
    """An occupied slot in a per-slot step: its rows in the step, its rows in the cache, the
    position it writes, its text's keys and values."""

    step_rows: slice
    cache_rows: slice
    position: int
    text: CrossAttentionCache | None


@dataclass(frozen=True)
class PerSlotAttention:
    """The CPU's batched step: projected [R, 3 dim] over the stepped rows; each occupied slot writes
    its position and attends over exactly its own positions (the eager step's call, per slot).
    Rows of a free slot (stepped when the form runs every slot's rows) attend to nothing: zeros."""

    heads: Heads
    cache: KVCache
    slots: list[Slot]

    def __call__(self, index: int, projected: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        g = self.heads
        count = projected.shape[0]
        packed = projected.view(count, 3, g.heads, 1, g.head_dim)
        keys, values = self.cache.keys[index], self.cache.values[index]
        attended = torch.zeros(count, g.heads, 1, g.head_dim, dtype=packed.dtype, device=packed.device)
        for slot in self.slots:
            rows, cached, end = slot.step_rows, slot.cache_rows, slot.position + 1
            keys[cached, :, slot.position] = packed[rows, 1, :, 0]
            values[cached, :, slot.position] = packed[rows, 2, :, 0]
            attended[rows] = g.attend(packed[rows, 0], keys[cached, :, :end], values[cached, :, :end])
        return g.rows(attended, dtype)


@dataclass(frozen=True)
class WholeText:
    """The prefill's cross-attention: query [B, T, dim] over the whole text."""

    heads: Heads
    text: CrossAttentionCache

    def __call__(self, index: int, query: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        g = self.heads
        return g.merge(g.attend(g.split(query), self.text.keys[index], self.text.values[index]), dtype)


@dataclass(frozen=True)
class TokenText:
    """One token per row: query [R, dim] over the text; `masked`: the text is padded to a fixed
    length and its mask ([1 or R, 1, 1, length]) hides the padding."""

    heads: Heads
    text: CrossAttentionCache
    masked: bool = False

    def __call__(self, index: int, query: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        g = self.heads
        mask = {"attn_mask": self.text.mask} if self.masked else {}
        q = query.view(query.shape[0], g.heads, 1, g.head_dim)
        return g.rows(g.attend(q, self.text.keys[index], self.text.values[index], **mask), dtype)


@dataclass(frozen=True)
class PerSlotText:
    """The CPU's batched step: each occupied slot's rows attend to its own text, whatever its length."""

    heads: Heads
    slots: list[Slot]

    def __call__(self, index: int, query: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        g = self.heads
        q = query.view(query.shape[0], g.heads, 1, g.head_dim)
        attended = torch.zeros_like(q)
        for slot in self.slots:
            attended[slot.step_rows] = g.attend(q[slot.step_rows], slot.text.keys[index], slot.text.values[index])
        return g.rows(attended, dtype)
