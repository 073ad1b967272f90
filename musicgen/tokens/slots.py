"""The batched step's buffers: S slots of one model, each a guided window (two rows).

The linear maps always run over all 2S rows (a free slot steps a dummy token): with a fixed shape
a row's numbers do not depend on the other rows (tests/test_batching.py), so a request's tokens
depend on its inputs, its seed and S, never on its neighbours. Attention, which mixes positions
but never rows, comes in two forms:

- static (CUDA, captured once as a graph and replayed; CachedTransformer.batched_step): every row
  at a position of its own, attention over the whole window with a mask, the text padded to
  CROSS_CAPACITY tokens with a per-row mask. Same shapes at every step, as a graph needs.
- per slot (the CPU, or a GPU whose capture failed; CachedTransformer.slots_step): each slot's
  attention over exactly its own positions and text. The whole window's masked attention reads
  every position of every slot at every step, which costs a CPU several times the linear maps.
"""

from __future__ import annotations

import torch

from musicgen.tokens.cache import CrossAttentionCache, KVCache
from musicgen.tokens.graphs import CROSS_CAPACITY, capture_step, window_positions
from musicgen.tokens.loop import WindowState
from musicgen.tokens.transformer import CachedTransformer

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
        self.at: list[int | None] = [None] * slots  # per slot: its next position (None: free)
        self.crosses: list[CrossAttentionCache | None] = [None] * slots  # per slot: its text's keys
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
        if (state.cross is None) != (not self.transformer.cross):
            return False
        return state.cross is None or not self.static or state.cross.keys[0].shape[2] <= CROSS_CAPACITY

    def load(self, slot: int, cache: KVCache, written: int, cross: CrossAttentionCache | None) -> None:
        """Put a started window in `slot`: the first `written` positions of its prefill's `cache`
        (WindowState: prefix + offset), and its text's `cross` keys and values."""
        rows = self._rows(slot)
        self.cache.storage[:, :, rows, :, :written] = cache.storage[:, :, :, :, :written]
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
        if not self.static:
            return self.transformer.slots_step(self.tokens, self.at, self.cache, self.crosses)
        return self.transformer.batched_step(self.tokens, self.positions, self.cache, self.cross)

    @staticmethod
    def _rows(slot: int) -> slice:
        return slice(ROWS_PER_SLOT * slot, ROWS_PER_SLOT * (slot + 1))
