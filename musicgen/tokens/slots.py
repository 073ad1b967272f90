"""The batched step's buffers: S slots of one model, each a guided window (two rows).

The linear maps always run over all 2S rows (a free slot steps a dummy token): with a fixed shape
a row's numbers do not depend on the other rows (tests/test_batching.py), so a request's tokens
depend on its inputs, its seed and S, never on its neighbours. Attention, which mixes positions
but never rows, comes in two forms:

- static (CUDA, captured once as a graph and replayed; SlotStep._masked_step): every row
  at a position of its own, attention over the whole window with a mask, the text padded to
  CROSS_CAPACITY tokens with a per-row mask. Same shapes at every step, as a graph needs.
- per slot (the CPU, or a GPU whose capture failed; SlotStep._per_slot_step): each slot's
  attention over exactly its own positions and text. The whole window's masked attention reads
  every position of every slot at every step, which costs a CPU several times the linear maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from musicgen.tokens.cache import CrossAttentionCache, KVCache
from musicgen.tokens.graphs import CROSS_CAPACITY, capture_step, window_positions
from musicgen.tokens.loop import WindowState
from musicgen.tokens.transformer import CachedTransformer, scaled, wide_linear

ROWS_PER_SLOT = 2  # the conditional and the null condition (classifier-free guidance)


class SlotStep:
    """Static buffers for `slots` windows of one model, and the step over all of them."""

    def __init__(self, transformer: CachedTransformer, model, slots: int, static: bool, capture: bool = False):
        """static: the static form (captured as a CUDA graph when `capture`); else attention per slot."""
        lm = transformer.lm
        t = self.transformer = transformer
        self.slots = slots
        rows = ROWS_PER_SLOT * slots
        device = next(iter(lm.parameters())).device
        dtype = t.kv_dtype(model.autocast)
        length = window_positions(model)
        positions = t.positions(length, device, lm.emb[0].weight.dtype)
        self.cache = KVCache(len(t.layers), rows, t.heads, length, t.head_dim, positions, dtype, zeroed=True)
        self.cross = None
        self.static = static
        # the per-slot form: each slot's next position (None: free) and its text's keys, and the
        # layers with their linear maps as wide_linear
        self.at: list[int | None] = [None] * slots
        self.crosses: list[CrossAttentionCache | None] = [None] * slots
        if not static:
            self.wide_layers, self.wide_heads = t.with_linear(wide_linear)
        if t.cross and self.static:
            keys = [
                torch.zeros(rows, t.heads, CROSS_CAPACITY, t.head_dim, dtype=dtype, device=device) for _ in t.layers
            ]
            mask = torch.zeros(rows, 1, 1, CROSS_CAPACITY, dtype=torch.bool, device=device)
            mask[..., :1] = True  # a free row attends to one zero key: defined, never read
            self.cross = CrossAttentionCache(keys, [torch.zeros_like(k) for k in keys], mask)
        self.tokens = torch.zeros(rows, lm.num_codebooks, dtype=torch.long, device=device)
        self.positions = torch.zeros(rows, dtype=torch.long, device=device)
        self.autocast = model.autocast  # for the uncaptured step (the graph was captured under it)
        self.graph = None
        if capture:
            self.graph, self.logits = capture_step(model, dtype, self._run)
            self.cache.clear()

    @property
    def nbytes(self) -> int:
        cross = 0 if self.cross is None else sum(k.numel() * k.element_size() for k in self.cross.keys) * 2
        return self.cache.storage.numel() * self.cache.storage.element_size() + cross

    def fits(self, state: WindowState) -> bool:
        """Whether a started window can run in a slot: one guided request whose positions and
        text fit the static buffers (else it runs on its own, eagerly)."""
        if not state.guided or state.batch != 1 or state.positions > self.cache.length:
            return False
        return self.takes_text(state.cross)

    def takes_text(self, cross: CrossAttentionCache | None) -> bool:
        """Whether a window's text (its cross-attention keys) fits: any length in the per-slot
        form, up to CROSS_CAPACITY tokens in the static one."""
        if (cross is None) != (not self.transformer.cross):
            return False
        return cross is None or not self.static or cross.keys[0].shape[2] <= CROSS_CAPACITY

    def load(self, slot: int, cache: KVCache, written: int, cross: CrossAttentionCache | None) -> None:
        """Put a started window in `slot`: the first `written` positions of its prefill's `cache`
        (WindowState: prefix + offset), and its text's `cross` keys and values."""
        rows = self._rows(slot)
        self.cache.storage[:, :, rows, :, :written] = cache.storage[:, :, :, :, :written]
        if not self.static:
            self.crosses[slot] = cross
        if self.cross is not None:
            length = cross.keys[0].shape[2]
            for mine, theirs in zip(self.cross.keys + self.cross.values, cross.keys + cross.values, strict=True):
                mine[rows, :, :length] = theirs
            self.cross.mask[rows] = False
            self.cross.mask[rows, ..., :length] = True

    def free(self, slot: int) -> None:
        """Let `slot` step a dummy token (its old contents stay, masked, until the next load)."""
        rows = self._rows(slot)
        self.tokens[rows] = 0
        self.positions[rows] = 0
        self.at[slot] = self.crosses[slot] = None
        if self.cross is not None:
            self.cross.mask[rows] = False
            self.cross.mask[rows, ..., :1] = True

    def feed(self, slot: int, tokens: torch.Tensor, position: int) -> None:
        """The next step's input of `slot`: tokens [2, K] at cache `position`."""
        rows = self._rows(slot)
        self.tokens[rows] = tokens
        self.positions[rows] = position
        self.at[slot] = position

    def step(self) -> torch.Tensor:
        """Every slot one step: logits [2S, K, card] (static: read before the next step)."""
        if self.graph is None:
            with self.autocast:
                return self._run()
        self.graph.replay()
        return self.logits

    def _run(self) -> torch.Tensor:
        return self._masked_step() if self.static else self._per_slot_step()

    def _masked_step(self) -> torch.Tensor:
        """The static form: tokens [R, K] at `positions` [R] -> logits [R, K, card]. Attention
        reads each row's whole cache, masking the positions after its own, and the padded cross
        cache through its per-row mask (cross.mask [R, 1, 1, T]): the same shapes whatever the rows
        hold, so a row's result never depends on the others, and a CUDA graph can replay it."""
        t, cache, positions = self.transformer, self.cache, self.positions
        rows = self.tokens.shape[0]
        x = t.embed(self.tokens[..., None])[:, 0] + cache.positions.index_select(0, positions)
        visible = (cache.slots.view(1, -1) <= positions.view(-1, 1)).view(rows, 1, 1, -1)
        every_row = torch.arange(rows, device=positions.device)
        cross_mask = {} if self.cross is None else {"attn_mask": self.cross.mask}
        for index, layer in enumerate(t.layers):
            h = layer.norm1(x)
            packed = F.linear(h, layer.qkv_weight, layer.qkv_bias).view(rows, 3, t.heads, 1, t.head_dim)
            keys, values = cache.keys[index], cache.values[index]
            keys[every_row, :, positions] = packed[:, 1, :, 0]
            values[every_row, :, positions] = packed[:, 2, :, 0]
            attended = t._attend(packed[:, 0], keys, values, attn_mask=visible)
            x = t.token_rest(layer, x, h, attended, self.cross, index, **cross_mask)
        return t.token_logits(x)

    def _per_slot_step(self) -> torch.Tensor:
        """The CPU's form: the linear maps (wide_linear) run over all R rows, a fixed shape;
        attention runs per slot over exactly its own positions and text, the very call the eager
        step makes for one prediction, so it reads only what the slot wrote. A free slot's rows
        attend to nothing and are never read."""
        t, cache = self.transformer, self.cache
        rows = self.tokens.shape[0]
        active = [(self._rows(slot), at, self.crosses[slot]) for slot, at in enumerate(self.at) if at is not None]
        x = t.embed(self.tokens[..., None])[:, 0] + cache.positions.index_select(0, self.positions)
        for index, layer in enumerate(self.wide_layers):
            h = layer.norm1(x)
            packed = wide_linear(h, layer.qkv_weight, layer.qkv_bias).view(rows, 3, t.heads, 1, t.head_dim)
            keys, values = cache.keys[index], cache.values[index]
            attended = torch.zeros(rows, t.heads, 1, t.head_dim, dtype=packed.dtype, device=packed.device)
            for part, position, _ in active:
                keys[part, :, position] = packed[part, 1, :, 0]
                values[part, :, position] = packed[part, 2, :, 0]
                attended[part] = t._attend(
                    packed[part, 0], keys[part, :, : position + 1], values[part, :, : position + 1]
                )
            x = x + scaled(layer.scale1, layer.out_proj(attended.reshape(rows, t.dim).to(h.dtype)))
            if t.cross:
                h = layer.norm_cross(x)
                query = layer.cross_query(h).view(rows, t.heads, 1, t.head_dim)
                attended = torch.zeros_like(query)
                for part, _, cross in active:
                    attended[part] = t._attend(query[part], cross.keys[index], cross.values[index])
                x = x + scaled(layer.scale_cross, layer.cross_out(attended.reshape(rows, t.dim).to(h.dtype)))
            x = x + scaled(layer.scale2, layer.linear2(layer.activation(layer.linear1(layer.norm2(x)))))
        return t.token_logits(x, self.wide_heads)

    @staticmethod
    def _rows(slot: int) -> slice:
        return slice(ROWS_PER_SLOT * slot, ROWS_PER_SLOT * (slot + 1))
