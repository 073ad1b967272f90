"""The batched step's static buffers: S slots of one model, each a guided window (two rows).

Every step runs the same shapes whatever the slots hold (CachedTransformer.batched_step): 2S rows,
each at a position of its own, attention over the whole window with a mask, the text padded to
CROSS_CAPACITY tokens with a per-row mask; a free slot steps a dummy token at position 0. With
fixed shapes a row's numbers do not depend on the other rows (tests/test_batching.py), so a
request's tokens depend on its inputs, its seed and S, never on its neighbours. On CUDA the step
is captured once as a graph (graphs.capture) and replayed.
"""

from __future__ import annotations

import torch

from musicgen.tokens.cache import CrossAttentionCache, KVCache
from musicgen.tokens.graphs import CROSS_CAPACITY, capture, window_positions
from musicgen.tokens.loop import WindowState
from musicgen.tokens.transformer import CachedTransformer

ROWS_PER_SLOT = 2  # the conditional and the null condition (classifier-free guidance)


class SlotStep:
    """Static buffers for `slots` windows of one model, and the step over all of them."""

    def __init__(self, transformer: CachedTransformer, model, slots: int, capture_graph: bool):
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
        if t.cross:
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
        if capture_graph:
            self.graph, self.logits = capture(model, dtype, self._run)
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
        if (state.cross is None) != (self.cross is None):
            return False
        return state.cross is None or state.cross.keys[0].shape[2] <= CROSS_CAPACITY

    def load(self, slot: int, cache: KVCache, written: int, cross: CrossAttentionCache | None) -> None:
        """Put a started window in `slot`: the first `written` positions of its prefill's `cache`
        (WindowState: prefix + offset), and its text's `cross` keys and values."""
        rows = self._rows(slot)
        self.cache.storage[:, :, rows, :, :written] = cache.storage[:, :, :, :, :written]
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
        if self.cross is not None:
            self.cross.mask[rows] = False
            self.cross.mask[rows, ..., :1] = True

    def feed(self, slot: int, tokens: torch.Tensor, position: int) -> None:
        """The next step's input of `slot`: tokens [2, K] at cache `position`."""
        rows = self._rows(slot)
        self.tokens[rows] = tokens
        self.positions[rows] = position

    def step(self) -> torch.Tensor:
        """Every slot one step: logits [2S, K, card] (static: read before the next step)."""
        if self.graph is None:
            with self.autocast:
                return self._run()
        self.graph.replay()
        return self.logits

    def _run(self) -> torch.Tensor:
        return self.transformer.batched_step(self.tokens, self.positions, self.cache, self.cross)

    @staticmethod
    def _rows(slot: int) -> slice:
        return slice(ROWS_PER_SLOT * slot, ROWS_PER_SLOT * (slot + 1))
