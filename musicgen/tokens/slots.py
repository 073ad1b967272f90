"""The batched step's buffers: S slots of one model, each a guided window (two rows), and its two forms.

No request's numbers may depend on its neighbours, so a request's tokens depend on its inputs, its
seed and S only. The forms get there differently (musicgen.tokens.choose.batched_step picks one;
docs/batching.md's table says which runs where):

- MaskedSlots (CUDA, captured once as a graph and replayed): the same shapes at every step. The
  linear maps run over all 2S rows (a free slot steps a dummy token); each row at a position of
  its own, attention over the whole window with a mask, the text padded to CROSS_CAPACITY tokens
  with a per-row mask (CachedTransformer.masked_step). A slot's adapter (tokens/adapters.py) is
  copied into static buffers the step reads (SlotAdapters): the graph is not captured again.
- PerSlotRows (the CPU): the linear maps are row_linear's, whose rows do not depend on the other
  rows or on their count, so only the occupied slots' rows run (`compact`: one request alone
  costs about what it costs with S = 1); each slot's attention runs over exactly its own
  positions and text, and its adapter's update over its own two rows (adapters.per_slot). Whether
  its rows keep their numbers whatever the occupancy is checked when it is built
  (occupancy_leaves_rows_alone); where it does not hold, every slot's rows run.
"""

from __future__ import annotations

import torch

from musicgen.tokens.adapters import Adapted, SlotAdapters, per_slot
from musicgen.tokens.attention import PerSlotAttention, PerSlotText, Slot
from musicgen.tokens.cache import CrossAttentionCache, KVCache
from musicgen.tokens.graphs import CROSS_CAPACITY, capture_step, window_positions
from musicgen.tokens.layer import Binder, run_layers
from musicgen.tokens.loop import WindowState
from musicgen.tokens.transformer import CachedTransformer

ROWS_PER_SLOT = 2  # the conditional and the null condition (classifier-free guidance)


class SlotStep:
    """Static buffers for `slots` windows of one model, and the step over all of them; `form`
    says how it steps (the setup log line names it)."""

    form = ""
    compact = False  # only the occupied slots' rows run

    def __init__(self, transformer: CachedTransformer, model, slots: int):
        lm = transformer.lm
        t = self.transformer = transformer
        self.slots = slots
        rows = ROWS_PER_SLOT * slots
        self.device = next(iter(lm.parameters())).device
        self.dtype = t.kv_dtype(model.autocast)
        length = window_positions(model)
        positions = t.positions(length, self.device, lm.emb[0].weight.dtype)
        self.cache = t.kv_cache(rows, length, positions, self.dtype, zeroed=True)
        self.tokens = torch.zeros(rows, lm.num_codebooks, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.at: list[int | None] = [None] * slots  # each slot's next position (None: free)
        self.autocast = model.autocast  # for an uncaptured step (a graph is captured under it)

    @property
    def nbytes(self) -> int:
        return self.cache.storage.numel() * self.cache.storage.element_size()

    def fits(self, state: WindowState) -> bool:
        """Whether a started window can run in a slot: one guided request whose positions, text
        and adapter fit the static buffers (else it runs on its own, eagerly)."""
        if not state.guided or state.batch != 1 or state.positions > self.cache.length:
            return False
        return self.takes_text(state.cross) and self.takes_adapter(state.adapted)

    def takes_adapter(self, adapted: Adapted | None) -> bool:
        """Whether a window's adapter can run in a slot."""
        return True

    def takes_text(self, cross: CrossAttentionCache | None) -> bool:
        """Whether a window's text (its cross-attention keys) fits the slots."""
        return (cross is None) == (not self.transformer.cross)

    def load(
        self, slot: int, cache: KVCache, written: int, cross: CrossAttentionCache | None, adapted: Adapted | None = None
    ) -> None:
        """Put a started window in `slot`: the first `written` positions of its prefill's `cache`
        (WindowState: prefix + offset), its text's `cross` keys and values, and its adapter."""
        cache.copy_into(self.cache, written, self._rows(slot))

    def free(self, slot: int) -> None:
        """Empty `slot`; its old cache contents stay, never read, until the next load."""
        rows = self._rows(slot)
        self.tokens[rows] = 0
        self.positions[rows] = 0
        self.at[slot] = None

    def feed(self, slot: int, tokens: torch.Tensor, position: int) -> None:
        """The next step's input of `slot`: tokens [2, K] at cache `position`."""
        rows = self._rows(slot)
        self.tokens[rows] = tokens
        self.positions[rows] = position
        self.at[slot] = position

    def step(self) -> torch.Tensor:
        """Every slot one step: logits [2S, K, card] (a graph's: read before the next step)."""
        with self.autocast:
            return self._run()

    def _run(self) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _rows(slot: int) -> slice:
        return slice(ROWS_PER_SLOT * slot, ROWS_PER_SLOT * (slot + 1))


class MaskedSlots(SlotStep):
    """Every slot's rows at every step, masked: the same shapes whatever the rows hold, so a row's
    result never depends on the others and a CUDA graph replays it (captured when `capture`)."""

    def __init__(self, transformer: CachedTransformer, model, slots: int, capture: bool = False, adapter_rank: int = 0):
        """`adapter_rank`: the highest adapter rank the slots hold (static buffers the step reads;
        0: none, and a window with an adapter runs on its own)."""
        super().__init__(transformer, model, slots)
        t, rows = transformer, ROWS_PER_SLOT * slots
        self.adapters = None
        self.layers = None  # the LM's own
        if adapter_rank:
            self.adapters = SlotAdapters(t.lm, slots, ROWS_PER_SLOT, adapter_rank, self.dtype, self.device)
            self.layers = self.adapters.layers(t.layers)
        self.cross = None
        if t.cross:
            keys = [torch.zeros(rows, t.heads, CROSS_CAPACITY, t.head_dim, dtype=self.dtype, device=self.device)
                    for _ in t.layers]  # fmt: skip
            mask = torch.zeros(rows, 1, 1, CROSS_CAPACITY, dtype=torch.bool, device=self.device)
            mask[..., :1] = True  # a free row attends to one zero key: defined, never read
            self.cross = CrossAttentionCache(keys, [torch.zeros_like(k) for k in keys], mask)
        self.graph = None
        if capture:
            self.graph, self.logits = capture_step(model, self.dtype, self._run)
            self.cache.clear()
        self.form = "masked, every slot's rows" + (", a CUDA graph" if self.graph is not None else "")

    @property
    def nbytes(self) -> int:
        cross = 0 if self.cross is None else sum(k.numel() * k.element_size() for k in self.cross.keys) * 2
        return super().nbytes + cross + (0 if self.adapters is None else self.adapters.nbytes)

    def takes_adapter(self, adapted: Adapted | None) -> bool:
        """Up to its buffers' rank (none without them)."""
        return adapted is None or (self.adapters is not None and self.adapters.takes(adapted))

    def takes_text(self, cross: CrossAttentionCache | None) -> bool:
        """Up to CROSS_CAPACITY text tokens (the padded buffers)."""
        return super().takes_text(cross) and (cross is None or cross.keys[0].shape[2] <= CROSS_CAPACITY)

    def load(
        self, slot: int, cache: KVCache, written: int, cross: CrossAttentionCache | None, adapted: Adapted | None = None
    ) -> None:
        super().load(slot, cache, written, cross)
        if self.adapters is not None:
            self.adapters.set(slot, adapted)
        if self.cross is not None:
            rows, length = self._rows(slot), cross.keys[0].shape[2]
            for mine, theirs in zip(self.cross.keys + self.cross.values, cross.keys + cross.values, strict=True):
                mine[rows, :, :length] = theirs
            self.cross.mask[rows] = False
            self.cross.mask[rows, ..., :length] = True

    def free(self, slot: int) -> None:
        super().free(slot)
        if self.adapters is not None:
            self.adapters.set(slot, None)
        if self.cross is not None:
            rows = self._rows(slot)
            self.cross.mask[rows] = False
            self.cross.mask[rows, ..., :1] = True

    def step(self) -> torch.Tensor:
        if self.graph is None:
            return super().step()
        self.graph.replay()
        return self.logits

    def _run(self) -> torch.Tensor:
        return self.transformer.masked_step(self.tokens, self.positions, self.cache, self.cross, self.layers)


class PerSlotRows(SlotStep):
    """The CPU's form: attention per slot over exactly its own positions and text, the linear maps
    bound by use() (row_linear's); `compact`: only the occupied slots' rows run."""

    def __init__(self, transformer: CachedTransformer, model, slots: int):
        super().__init__(transformer, model, slots)
        self.texts: list[CrossAttentionCache | None] = [None] * slots  # each slot's text keys
        self.adapted: list[Adapted | None] = [None] * slots  # each slot's adapter
        self._adapted_layers: list | None = None  # the row layers as the slots' adapters make them (None: to build)
        self.packed_bytes = 0  # the packed copies of the weights its linear maps keep

    def use(self, bind: Binder, compact: bool, form: str) -> None:
        """Step with the linear maps `bind` binds (the packed copies of a previous binding go; a
        binder that packs counts its copies' bytes in `nbytes`)."""
        self.row_layers, self.row_heads = self.transformer.with_linear(bind)
        self._adapted_layers = None
        self.compact, self.form, self.packed_bytes = compact, form, getattr(bind, "nbytes", 0)

    @property
    def nbytes(self) -> int:
        return super().nbytes + self.packed_bytes

    def load(
        self, slot: int, cache: KVCache, written: int, cross: CrossAttentionCache | None, adapted: Adapted | None = None
    ) -> None:
        super().load(slot, cache, written, cross)
        self.texts[slot] = cross
        self.adapted[slot] = adapted
        self._adapted_layers = None  # the slots' rows may have moved

    def free(self, slot: int) -> None:
        super().free(slot)
        self.texts[slot] = None
        self.adapted[slot] = None
        self._adapted_layers = None

    def _layers(self, occupied: list[tuple[Slot, int]]) -> list:
        """The row layers, each occupied slot's rows adapted by its adapter (built again only
        after a slot is loaded or freed)."""
        if self._adapted_layers is None:
            parts = [(slot.step_rows, self.adapted[index]) for slot, index in occupied if self.adapted[index]]
            self._adapted_layers = per_slot(self.row_layers, parts)
        return self._adapted_layers

    def _run(self) -> torch.Tensor:
        """Logits [2S, K, card] of the stepped rows (the occupied slots' when `compact`, else
        every slot's); a free slot's rows are zeros (compact) or never read."""
        t, cache = self.transformer, self.cache
        stepped = [slot for slot, at in enumerate(self.at) if at is not None or not self.compact]
        if not stepped:
            return torch.zeros(self.tokens.shape[0], t.lm.num_codebooks, t.lm.card, device=self.tokens.device)
        index = torch.cat([torch.arange(ROWS_PER_SLOT) + ROWS_PER_SLOT * slot for slot in stepped]).to(
            self.tokens.device
        )
        occupied = [
            (Slot(self._rows(here), self._rows(slot), self.at[slot], self.texts[slot]), slot)
            for here, slot in enumerate(stepped)
            if self.at[slot] is not None
        ]
        layers = self._layers(occupied)
        occupied = [slot for slot, _ in occupied]
        x = t.embed(self.tokens[index][..., None])[:, 0] + cache.positions.index_select(0, self.positions[index])
        text = PerSlotText(t.geometry, occupied) if t.cross else None
        x = run_layers(layers, x, PerSlotAttention(t.geometry, cache, occupied), text)
        logits = t.logits(x, self.row_heads)
        if len(index) == self.tokens.shape[0]:
            return logits
        return logits.new_zeros(self.tokens.shape[0], *logits.shape[1:]).index_copy_(0, index, logits)

    def occupancy_leaves_rows_alone(self) -> bool:
        """Whether each slot's logits come out the same, bit for bit, whatever the occupancy: every
        slot occupied (random caches, texts and tokens), then slot 0 freed, then slot 1, ...;
        at each step every occupied slot's logits against its first ones. That covers every row
        count from 2 to 2S and every place a slot's rows can take among them. Run on the empty
        buffers, which it leaves empty, with the rows of occupied slots only."""
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
                self.texts[slot] = CrossAttentionCache(keys, values)
            tokens = torch.randint(0, t.lm.card, (ROWS_PER_SLOT, t.lm.num_codebooks), generator=generator)
            self.feed(slot, tokens.to(device), position)
        was_compact, self.compact = self.compact, True
        try:
            with self.autocast:
                first = self._run().clone()
                for freed in range(self.slots - 1):
                    self.free(freed)
                    logits = self._run()
                    occupied = slice(ROWS_PER_SLOT * (freed + 1), None)
                    if not torch.equal(logits[occupied], first[occupied]):
                        return False
            return True
        finally:
            self.compact = was_compact
            for slot in range(self.slots):
                self.free(slot)
            self.cache.clear()
