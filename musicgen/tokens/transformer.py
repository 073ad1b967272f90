"""The LM's forward pass over a preallocated key/value cache, run with the LM's own modules.

audiocraft's StreamingTransformer concatenates every new key/value onto the whole cache at every
step (`torch.cat` in `_complete_kv`) and walks its streaming-state machinery per layer. Here each
layer's keys and values are written in place into a cache allocated once per window (cache.py);
the weights, norms, projections and feed-forward blocks are the loaded LM's own (no copy).

The forms of the same pass, each the layers' one arithmetic (layer.run_layers) with its own
attention (musicgen.tokens.attention):
- `forward(...)`: a window's prefill; attention reads a view of the filled prefix of the cache, so
  on the CPU it makes the same scaled_dot_product_attention call on the same values as the stock
  loop (hence the same numbers).
- `step(...)`: the eager step, one token per row, every step of a window on the CPU.
- `masked_step(...)` (static shapes, for a CUDA graph): one token per row, each row at its own
  position (a tensor), attention over the whole cache with a mask hiding the positions not yet
  written. The CUDA graph of one window (graphs.py) and the batch's masked form (slots.py) replay it.
The CPU's batched step (slots.PerSlotRows) runs the same layers with its own attention and linear maps.

Only the architecture of the released MusicGen LMs is handled (pre-norm layers, sinusoidal
positions, packed self-attention through torch's attention, optional cross-attention); anything
else raises Unsupported, and the caller serves that model with audiocraft's own loop.
"""

from __future__ import annotations

import typing as tp

import torch
import torch.nn.functional as F
from audiocraft.modules.transformer import StreamingTransformer, _get_attention_time_dimension, create_sin_embedding

from musicgen.tokens.attention import Heads, MaskedAttention, TokenAttention, TokenText, WholeText, WindowAttention
from musicgen.tokens.cache import CrossAttentionCache, KVCache
from musicgen.tokens.layer import Binder, BoundLayer, fast, run_layers


class Unsupported(Exception):
    """The LM has a feature this pass does not implement; audiocraft's loop serves it instead."""


def check_supported(lm) -> None:
    """Raise Unsupported naming the first setting of `lm` this pass does not reproduce."""
    transformer: StreamingTransformer = lm.transformer
    fuser_ops = {op for op, names in lm.fuser.fuse2cond.items() if names}
    problems = []
    if transformer.positional_embedding != "sin":
        problems.append(f"positional_embedding={transformer.positional_embedding}")
    if transformer.checkpointing != "none":
        problems.append(f"checkpointing={transformer.checkpointing}")
    if fuser_ops - {"prepend", "cross"}:
        problems.append(f"condition fusing by {sorted(fuser_ops - {'prepend', 'cross'})}")
    if lm.two_step_cfg:
        problems.append("two_step_cfg")
    for index, layer in enumerate(transformer.layers):
        attention = layer.self_attn
        settings = {
            "norm_first": layer.norm_first,
            "custom attention": attention.custom,
            "memory_efficient": attention.memory_efficient,
            "causal": attention.causal,
        }
        problems += [f"layer {index}: {name} is off" for name, value in settings.items() if not value]
        if _get_attention_time_dimension(attention.memory_efficient) != 2:
            problems.append(f"layer {index}: xformers attention backend")
        for name in ("past_context", "rope"):
            if getattr(attention, name) is not None:
                problems.append(f"layer {index}: {name}")
        if attention.kv_repeat != 1 or attention.qk_layer_norm:
            problems.append(f"layer {index}: kv_repeat/qk_layer_norm")
        cross = layer.cross_attention
        if cross is not None and (cross.qk_layer_norm or not cross.custom):
            problems.append(f"layer {index}: cross-attention qk_layer_norm or non-custom")
    if problems:
        raise Unsupported("; ".join(problems))


class CachedTransformer:
    """lm.transformer (+ out_norm and the output heads) stepping over a KVCache. Its layers run
    layer.run_layers; each form of the step plugs in its attention (musicgen.tokens.attention)."""

    def __init__(self, lm):
        check_supported(lm)
        self.lm = lm
        first = lm.transformer.layers[0].self_attn
        self.dim, self.heads = first.embed_dim, first.num_heads
        self.head_dim = self.dim // self.heads
        self.geometry = Heads(self.heads, self.head_dim, first.attention_as_float32)
        self.layers = [BoundLayer.of(layer, self.dim) for layer in lm.transformer.layers]
        self.cross_attentions = [layer.cross_attention for layer in lm.transformer.layers]
        self.cross = self.cross_attentions[0] is not None
        self.max_period = lm.transformer.max_period
        self.positional_scale = lm.transformer.positional_scale
        self.embeddings = [(emb.weight, emb.padding_idx) for emb in lm.emb]
        self.out_norm = None if lm.out_norm is None else fast(lm.out_norm)
        self.heads_out = [fast(linear) for linear in lm.linears]

    def with_linear(self, bind: Binder) -> tuple[list[BoundLayer], list[tp.Callable]]:
        """The layers and output heads again, each linear map bound by `bind` (row_linear's, for
        the CPU's batched step in tokens/slots.py)."""
        layers = [BoundLayer.of(layer, self.dim, bind) for layer in self.lm.transformer.layers]
        return layers, [fast(head, bind) for head in self.lm.linears]

    # ---------------------------------------------------------------- shared pieces

    def kv_dtype(self, autocast) -> torch.dtype:
        """The dtype of the keys and values (the projections' output) under `autocast` (a
        MusicGen's TorchAutocast): its float16 on a GPU, else the attention weights' own."""
        weight = self.lm.transformer.layers[0].self_attn.in_proj_weight
        if autocast.autocast is not None:
            return autocast.autocast.fast_dtype
        return weight.dtype

    def kv_cache(self, batch: int, length: int, positions: torch.Tensor, dtype: torch.dtype, zeroed: bool) -> KVCache:
        """A cache of every layer's keys and values for `batch` rows and `length` positions (cache.KVCache)."""
        return KVCache(len(self.layers), batch, self.heads, length, self.head_dim, positions, dtype, zeroed)

    def positions(self, length: int, device, dtype) -> torch.Tensor:
        """The sinusoidal embedding of positions 0..length-1, scaled, [length, dim]: the values the
        stock transformer adds at each offset (computed elementwise, so a table gives the same)."""
        positions = torch.arange(length, device=device).view(1, -1, 1)
        return (self.positional_scale * create_sin_embedding(positions, self.dim, self.max_period, dtype=dtype))[0]

    def embed(self, sequence: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, S, dim] of `sequence` [B, K, S], summed over codebooks as LMModel
        does (its sum() starts from 0; adding 0 first changes no value)."""
        total = None
        for k, (weight, padding_idx) in enumerate(self.embeddings):
            embedded = F.embedding(sequence[:, k], weight, padding_idx)
            total = embedded if total is None else total + embedded
        return total

    def cross_cache(self, source: torch.Tensor | None) -> CrossAttentionCache | None:
        """Every layer's cross-attention keys and values of `source` (the fused text condition),
        computed once per window (the stock layer recomputes them at every step)."""
        if not self.cross:
            return None
        keys, values = [], []
        d = self.dim
        for attention in self.cross_attentions:
            weight, bias = attention.in_proj_weight, attention.in_proj_bias
            keys.append(
                self.geometry.split(F.linear(source, weight[d : 2 * d], None if bias is None else bias[d : 2 * d]))
            )
            values.append(
                self.geometry.split(F.linear(source, weight[2 * d :], None if bias is None else bias[2 * d :]))
            )
        return CrossAttentionCache(keys, values)

    def logits(self, out: torch.Tensor, heads: list[tp.Callable] | None = None) -> torch.Tensor:
        """Output heads (`heads`, or the LM's own) after out_norm, as LMModel.forward computes them:
        [B, S, dim] -> [B, K, S, card]; one token per row, [R, dim] -> [R, K, card]."""
        if self.out_norm is not None:
            out = self.out_norm(out)
        return torch.stack([head(out) for head in heads or self.heads_out], dim=1)

    # ---------------------------------------------------------------- the forms of the pass

    def forward(
        self, x: torch.Tensor, start: int, cache: KVCache, cross: CrossAttentionCache | None, layers=None
    ) -> torch.Tensor:
        """A window's prefill: x [B, T, dim] (embedded, positions not yet added) at positions
        start..start+T-1 -> the transformer's output [B, T, dim]; writes the keys/values of those
        positions. T > 1 only for a window's first call (start 0): causal attention within it, as
        audiocraft does when its cache is empty. `layers`: bound layers to run instead of the LM's
        own (a request's adapter: musicgen.tokens.adapters)."""
        x = x + cache.positions[start : start + x.shape[1]]
        text = None if cross is None else WholeText(self.geometry, cross)
        return run_layers(layers or self.layers, x, WindowAttention(self.geometry, cache, start), text)

    def step(self, tokens: torch.Tensor, position: int, cache: KVCache, cross: CrossAttentionCache | None, layers=None):
        """The eager step: one token per row, tokens [B, K] at `position` -> logits [B, K, card].

        forward() for T = 1 with [B, dim] activations instead of [B, 1, dim]: the same kernels on
        the same values (a [B, 1, dim] linear is this very matrix product), fewer reshapes.
        """
        x = self.embed(tokens[..., None])[:, 0] + cache.positions[position]
        text = None if cross is None else TokenText(self.geometry, cross)
        return self.logits(run_layers(layers or self.layers, x, TokenAttention(self.geometry, cache, position), text))

    def masked_step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        cross: CrossAttentionCache | None,
        layers=None,
    ) -> torch.Tensor:
        """The static step (capturable as a CUDA graph): tokens [R, K], row r at positions[r] (a
        device tensor) -> logits [R, K, card]. Attention reads each row's whole cache and masks the
        positions after its own; cross-attention reads the padded text and masks its padding
        (cross.mask). The same shapes whatever the rows hold."""
        x = self.embed(tokens[..., None])[:, 0] + cache.positions.index_select(0, positions)
        text = None if cross is None else TokenText(self.geometry, cross, masked=True)
        attention = MaskedAttention.of(self.geometry, cache, positions)
        return self.logits(run_layers(layers or self.layers, x, attention, text))
