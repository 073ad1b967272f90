"""The batched step's buffers: S slots of one model, each a guided window (two rows).

No request's numbers may depend on its neighbours, so a request's tokens depend on its inputs,
its seed and S only. The step's two forms get there differently:

- static (CUDA, captured once as a graph and replayed; SlotStep._masked_step): the same shapes
  at every step. The linear maps run over all 2S rows (a free slot steps a dummy token); each
  row at a position of its own, attention over the whole window with a mask, the text padded to
  CROSS_CAPACITY tokens with a per-row mask.
- per slot (the CPU; SlotStep._per_slot_step): the linear maps
  are row_linear's, whose rows do not depend on the other rows or on their count, so only the
  occupied slots' rows run (one request alone costs about what it costs with S = 1); each
  slot's attention runs over exactly its own positions and text. Whether the whole step's rows
  keep their numbers whatever the occupancy is checked when the step is built (`compact`);
  where it does not hold, every slot's rows run at every step, a fixed shape.
"""

from __future__ import annotations

import torch

from musicgen.tokens.cache import CrossAttentionCache, KVCache
from musicgen.tokens.graphs import CROSS_CAPACITY, capture_step, window_positions
from musicgen.tokens.loop import WindowState
from musicgen.tokens.row_linear import PackedBinder, bind_wide, packing_works
from musicgen.tokens.transformer import CachedTransformer, scaled

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
        # layers with row_linear's linear maps
        self.at: list[int | None] = [None] * slots
        self.crosses: list[CrossAttentionCache | None] = [None] * slots
        self.packed_bytes = 0
        self.compact = False  # only the occupied slots' rows run (_choose_linear_maps)
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
        self.form = "masked, every slot's rows" + (", a CUDA graph" if self.graph is not None else "")
        if not static:
            self._choose_linear_maps()

    @property
    def nbytes(self) -> int:
        cross = 0 if self.cross is None else sum(k.numel() * k.element_size() for k in self.cross.keys) * 2
        return self.cache.storage.numel() * self.cache.storage.element_size() + cross + self.packed_bytes

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
        cache.copy_into(self.cache, written, rows)
        if not self.static:
            self.crosses[slot] = cross
        if self.cross is not None:
            length = cross.keys[0].shape[2]
            for mine, theirs in zip(self.cross.keys + self.cross.values, cross.keys + cross.values, strict=True):
                mine[rows, :, :length] = theirs
            self.cross.mask[rows] = False
            self.cross.mask[rows, ..., :length] = True

    def free(self, slot: int) -> None:
        """Empty `slot`: its rows step a dummy token (static form) or none (compact per-slot form);
        its old cache contents stay, never read, until the next load."""
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
            packed = layer.qkv(h).view(rows, 3, t.heads, 1, t.head_dim)
            keys, values = cache.keys[index], cache.values[index]
            keys[every_row, :, positions] = packed[:, 1, :, 0]
            values[every_row, :, positions] = packed[:, 2, :, 0]
            attended = t._attend(packed[:, 0], keys, values, attn_mask=visible)
            x = t.token_rest(layer, x, h, attended, self.cross, index, **cross_mask)
        return t.token_logits(x)

    def _per_slot_step(self) -> torch.Tensor:
        """The CPU's form: the linear maps (row_linear's) over the occupied slots' rows when
        `compact`, else over all of them; attention per slot over exactly its own positions and
        text, the very call the eager step makes for one prediction, so it reads only what the
        slot wrote. Logits [2S, K, card]; a free slot's rows are zeros (compact) or never read."""
        t, cache = self.transformer, self.cache
        stepped = [slot for slot, at in enumerate(self.at) if at is not None or not self.compact]
        if not stepped:
            return torch.zeros(self.tokens.shape[0], t.lm.num_codebooks, t.lm.card, device=self.tokens.device)
        index = torch.cat([torch.arange(ROWS_PER_SLOT) + ROWS_PER_SLOT * slot for slot in stepped]).to(
            self.tokens.device
        )
        # per occupied slot: its rows in this step, its rows in the cache, its position, its text
        active = [
            (self._rows(here), self._rows(slot), self.at[slot], self.crosses[slot])
            for here, slot in enumerate(stepped)
            if self.at[slot] is not None
        ]
        count = len(index)
        x = t.embed(self.tokens[index][..., None])[:, 0] + cache.positions.index_select(0, self.positions[index])
        for layer_index, layer in enumerate(self.row_layers):
            h = layer.norm1(x)
            projected = layer.qkv(h).view(count, 3, t.heads, 1, t.head_dim)
            keys, values = cache.keys[layer_index], cache.values[layer_index]
            attended = torch.zeros(count, t.heads, 1, t.head_dim, dtype=projected.dtype, device=projected.device)
            for step_rows, cache_rows, position, _ in active:
                keys[cache_rows, :, position] = projected[step_rows, 1, :, 0]
                values[cache_rows, :, position] = projected[step_rows, 2, :, 0]
                attended[step_rows] = t._attend(
                    projected[step_rows, 0], keys[cache_rows, :, : position + 1], values[cache_rows, :, : position + 1]
                )
            x = x + scaled(layer.scale1, layer.out_proj(attended.reshape(count, t.dim).to(h.dtype)))
            if t.cross:
                h = layer.norm_cross(x)
                query = layer.cross_query(h).view(count, t.heads, 1, t.head_dim)
                attended = torch.zeros_like(query)
                for step_rows, _, _, cross in active:
                    attended[step_rows] = t._attend(
                        query[step_rows], cross.keys[layer_index], cross.values[layer_index]
                    )
                x = x + scaled(layer.scale_cross, layer.cross_out(attended.reshape(count, t.dim).to(h.dtype)))
            x = x + scaled(layer.scale2, layer.linear2(layer.activation(layer.linear1(layer.norm2(x)))))
        logits = t.token_logits(x, self.row_heads)
        if count == self.tokens.shape[0]:
            return logits
        return logits.new_zeros(self.tokens.shape[0], *logits.shape[1:]).index_copy_(0, index, logits)

    def _choose_linear_maps(self) -> None:
        """The per-slot form's linear maps, and whether it steps the occupied slots' rows only:
        oneDNN's packed products where they work here and pass the occupancy check, else
        wide_linear over the occupied rows where that passes, else wide_linear over every slot's
        rows at every step (a fixed shape, as this form ran before the packed products)."""
        t = self.transformer
        if packing_works(t.lm.transformer.layers[0].linear1.weight):
            try:
                binder = PackedBinder(ROWS_PER_SLOT * self.slots)
                self.row_layers, self.row_heads = t.with_linear(binder)
                if self._occupancy_leaves_rows_alone():
                    self.packed_bytes, self.compact = binder.nbytes, True
                    self.form = "per slot, oneDNN's packed products over the occupied slots' rows"
                    return
            except RuntimeError:  # a weight this build of oneDNN cannot pack
                pass
        self.row_layers, self.row_heads = t.with_linear(bind_wide)  # (the packed copies, if any, go)
        self.compact = self._occupancy_leaves_rows_alone()
        self.form = "per slot, MKL's (W @ x^T)^T over " + (
            "the occupied slots' rows" if self.compact else "every slot's rows"
        )

    def _occupancy_leaves_rows_alone(self) -> bool:
        """Whether each slot's logits come out the same, bit for bit, whatever the occupancy: every
        slot occupied (random caches, texts and tokens), then slot 0 freed, then slot 1, ...;
        at each step every occupied slot's logits against its first ones. That covers every row
        count from 2 to 2S and every place a slot's rows can take among them. Run once, on the
        empty buffers, which it leaves empty."""
        t = self.transformer
        generator = torch.Generator().manual_seed(0)
        device, dtype = self.tokens.device, self.cache.storage.dtype
        position = min(40, self.cache.length - 1)
        written = self.cache.storage[..., : position + 1, :]  # [layers, 2, rows, heads, positions, d]
        written.copy_(torch.randn(written.shape, generator=generator).to(device, dtype))
        for slot in range(self.slots):
            if t.cross:
                keys = [torch.randn(2, t.heads, 7, t.head_dim, generator=generator).to(device, dtype) for _ in t.layers]
                values = [torch.randn(k.shape, generator=generator).to(device, dtype) for k in keys]
                self.crosses[slot] = CrossAttentionCache(keys, values)
            tokens = torch.randint(0, t.lm.card, (ROWS_PER_SLOT, t.lm.num_codebooks), generator=generator)
            self.feed(slot, tokens.to(device), position)
        was_compact, self.compact = self.compact, True
        try:
            with self.autocast:
                first = self._per_slot_step().clone()
                for freed in range(self.slots - 1):
                    self.free(freed)
                    logits = self._per_slot_step()
                    occupied = slice(ROWS_PER_SLOT * (freed + 1), None)
                    if not torch.equal(logits[occupied], first[occupied]):
                        return False
            return True
        finally:
            self.compact = was_compact
            for slot in range(self.slots):
                self.free(slot)
            self.cache.clear()

    @staticmethod
    def _rows(slot: int) -> slice:
        return slice(ROWS_PER_SLOT * slot, ROWS_PER_SLOT * (slot + 1))
