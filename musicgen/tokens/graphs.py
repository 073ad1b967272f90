"""The step as a CUDA graph: captured once per model with static shapes, then replayed.

The captured step is CachedTransformer.masked_step (the same one the batch's masked form captures,
slots.MaskedSlots): a key/value cache for the longest window (its positions masked until
written), cross-attention keys/values padded to CROSS_CAPACITY text tokens (masked), one token per
row, the position a device tensor. A window that does not fit (a longer text, a longer melody
prefix) runs eagerly instead. Capture happens under the model's own autocast (float16 on a GPU).
"""

from __future__ import annotations

import torch
from audiocraft.models import builders

from musicgen.tokens.cache import CrossAttentionCache, KVCache
from musicgen.tokens.transformer import CachedTransformer

CROSS_CAPACITY = 256  # text tokens the captured step's cross-attention holds (T5 tokens of the prompt)
PREFIX_CAPACITY = 512  # positions reserved before the pattern steps (the melody model's chroma + text prefix)
FRAME_RATE = 50  # Hz: the 32 kHz EnCodec's token frames, which the LM config does not state
WARMUP_STEPS = 3  # eager runs on a side stream before capture, as torch.cuda.graph asks


def capture_step(model, dtype: torch.dtype, run):
    """`run()` (one static step) captured as a CUDA graph under `model`'s autocast (float16 keys
    and values as `dtype`): (the graph, its static output). Warm-up runs first on a side stream,
    as torch.cuda.graph asks."""
    graph = torch.cuda.CUDAGraph()
    # model.autocast's settings, without its weight-cast cache (a graph must not capture one)
    enabled = model.autocast.autocast is not None
    autocast = torch.autocast("cuda", dtype=dtype if enabled else torch.float16, enabled=enabled, cache_enabled=False)
    previous = torch.cuda.current_stream()
    stream = torch.cuda.Stream()
    stream.wait_stream(previous)
    try:
        with torch.cuda.stream(stream), autocast:
            for _ in range(WARMUP_STEPS):
                run()
        previous.wait_stream(stream)
        with torch.cuda.graph(graph), autocast:
            output = run()
    except Exception:
        # a failed capture can leave its stream current (torch.cuda.graph's exit raises
        # before it restores the stream): put this thread back where it was
        torch.cuda.set_stream(previous)
        torch.cuda.synchronize()
        raise
    return graph, output


def static_cache_bytes(cfg, batch: int = 2, element_bytes: int = 2) -> int:
    """What a GraphedStep for the LM config `cfg` (its xp.cfg) holds, before the LM is loaded:
    keys and values for PREFIX_CAPACITY + the 30 s window's pattern steps (audiocraft's pattern
    provider, as GraphedStep counts them), and the padded cross-attention buffers when text is
    fused by cross attention; float16 on a GPU."""
    lm = cfg.transformer_lm
    frames = int(cfg.dataset.segment_duration * FRAME_RATE)
    steps = len(builders.get_codebooks_pattern_provider(lm.n_q, cfg.codebooks_pattern).get_pattern(frames).layout)
    per_position = 2 * lm.num_layers * batch * lm.dim * element_bytes  # keys and values
    cross = CROSS_CAPACITY * per_position if cfg.fuser.get("cross") else 0
    return (PREFIX_CAPACITY + steps) * per_position + cross


def window_positions(model) -> int:
    """Cache positions a static step holds: PREFIX_CAPACITY + the pattern steps of a window of
    the model's max_duration."""
    window_frames = int(model.max_duration * model.frame_rate)
    return PREFIX_CAPACITY + len(model.lm.pattern_provider.get_pattern(window_frames).layout)


class GraphedStep:
    """A captured step of `transformer` for guidance batches of `batch` rows and windows of up to
    the model's max_duration (plus PREFIX_CAPACITY positions of prefix)."""

    def __init__(self, transformer: CachedTransformer, model, batch: int = 2, capture: bool = True):
        """capture=False runs the same static step without a graph (on the CPU: what the graph
        would replay, for the checks and the tests)."""
        lm = transformer.lm
        self.transformer = transformer
        self.batch = batch
        device = next(iter(lm.parameters())).device
        length = window_positions(model)
        t = transformer
        positions = t.positions(length, device, lm.emb[0].weight.dtype)  # added to the embeddings
        dtype = t.kv_dtype(model.autocast)
        self.cache = t.kv_cache(batch, length, positions, dtype, zeroed=True)
        self.cross = None
        if t.cross:
            self.cross = CrossAttentionCache.padded(
                len(t.layers), batch, t.heads, CROSS_CAPACITY, t.head_dim, dtype, device
            )
        self.tokens = torch.zeros(batch, lm.num_codebooks, dtype=torch.long, device=device)
        self.positions = torch.zeros(batch, dtype=torch.long, device=device)  # every row at the window's position
        self.graph = None
        if capture:
            self.graph, self.logits = capture_step(model, self.cache.storage.dtype, self._run)
            self.cache.clear()

    def _run(self) -> torch.Tensor:
        return self.transformer.masked_step(self.tokens, self.positions, self.cache, self.cross)

    @property
    def nbytes(self) -> int:
        cross = 0 if self.cross is None else sum(k.numel() * k.element_size() for k in self.cross.keys) * 2
        return self.cache.storage.numel() * self.cache.storage.element_size() + cross

    def fits(self, batch: int, length: int) -> bool:
        return batch == self.batch and length <= self.cache.length

    def takes(self, cross: CrossAttentionCache | None) -> bool:
        """Whether a window's cross-attention fits the padded buffers; if so, copy it in."""
        if cross is None:
            return self.cross is None
        if self.cross is None or cross.keys[0].shape[2] > CROSS_CAPACITY or cross.keys[0].shape[0] != self.batch:
            return False
        self.cross.fill(cross)
        return True

    def step(self, tokens: torch.Tensor, position: int, cache: KVCache, cross) -> torch.Tensor:
        """loop.Step: copy the inputs into the static buffers, replay, return the static logits."""
        self.tokens.copy_(tokens)
        self.positions.fill_(position)
        if self.graph is None:
            return self._run()
        self.graph.replay()
        return self.logits
