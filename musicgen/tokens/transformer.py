"""The LM's forward pass over a preallocated key/value cache, run with the LM's own modules.

audiocraft's StreamingTransformer concatenates every new key/value onto the whole cache at every
step (`torch.cat` in `_complete_kv`) and walks its streaming-state machinery per layer. Here each
layer's keys and values are written in place into a cache allocated once per window (cache.py);
the weights, norms, projections and feed-forward blocks are the loaded LM's own (no copy).

Two forms of the same pass:
- `forward(...)` (eager): attention reads a view of the filled prefix of the cache, so on the CPU
  it makes the same scaled_dot_product_attention call on the same values as the stock loop (hence
  the same numbers); used for the prefill of every window and for every step on the CPU.
- `static_step(...)` (static shapes, for a CUDA graph): one token, its position a tensor, attention
  over the whole cache with a mask hiding the positions not yet written.

Only the architecture of the released MusicGen LMs is handled (pre-norm layers, sinusoidal
positions, packed self-attention through torch's attention, optional cross-attention); anything
else raises Unsupported, and the caller serves that model with audiocraft's own loop.
"""

from __future__ import annotations

import functools
import typing as tp

import torch
import torch.nn.functional as F
from audiocraft.modules.transformer import StreamingTransformer, _get_attention_time_dimension, create_sin_embedding
from torch import nn

from musicgen.tokens.cache import CrossAttentionCache, KVCache

Linear = tp.Callable[[torch.Tensor], torch.Tensor]
Binder = tp.Callable[[torch.Tensor, torch.Tensor | None], Linear]  # (weight, bias) -> x [..., in] -> [..., out]


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


def bind_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> Linear:
    """F.linear over the module's own weight, as the stock layer computes it (the one-window
    step's, token-exact with audiocraft; tokens/row_linear.py has the batched step's)."""
    return lambda x: F.linear(x, weight, bias)


def _fast(module: nn.Module, bind: Binder = bind_linear) -> tp.Callable[[torch.Tensor], torch.Tensor] | None:
    """The module's own computation without nn.Module's call machinery (which costs more than a
    small kernel), or None for an identity; any other module is called as it is. `bind`: how a
    Linear is computed (F.linear, or one of row_linear's for the CPU's batched step)."""
    if isinstance(module, nn.Identity):
        return None
    if type(module) is nn.LayerNorm:
        shape, weight, bias, eps = module.normalized_shape, module.weight, module.bias, module.eps
        return lambda x: F.layer_norm(x, shape, weight, bias, eps)
    if type(module) is nn.Linear:
        return bind(module.weight, module.bias)
    return module


class _Layer(tp.NamedTuple):
    """One transformer layer's pieces, bound once (the weights are the module's own tensors)."""

    norm1: tp.Callable
    qkv: tp.Callable  # the packed self-attention projection: x -> [q k v]
    out_proj: tp.Callable
    scale1: tp.Callable | None
    norm_cross: tp.Callable | None
    cross_query: tp.Callable | None
    cross_out: tp.Callable | None
    scale_cross: tp.Callable | None
    norm2: tp.Callable
    linear1: tp.Callable
    activation: tp.Callable
    linear2: tp.Callable
    scale2: tp.Callable | None

    @classmethod
    def of(cls, layer, dim: int, bind: Binder = bind_linear) -> _Layer:
        attention, cross = layer.self_attn, layer.cross_attention
        cross_query = None
        if cross is not None:
            bias = None if cross.in_proj_bias is None else cross.in_proj_bias[:dim]
            cross_query = bind(cross.in_proj_weight[:dim], bias)
        fast = functools.partial(_fast, bind=bind)
        return cls(
            norm1=fast(layer.norm1),
            qkv=bind(attention.in_proj_weight, attention.in_proj_bias),
            out_proj=fast(attention.out_proj),
            scale1=fast(layer.layer_scale_1),
            norm_cross=None if cross is None else fast(layer.norm_cross),
            cross_query=cross_query,
            cross_out=None if cross is None else fast(cross.out_proj),
            scale_cross=None if cross is None else fast(layer.layer_scale_cross),
            norm2=fast(layer.norm2),
            linear1=fast(layer.linear1),
            activation=layer.activation,
            linear2=fast(layer.linear2),
            scale2=fast(layer.layer_scale_2),
        )


def scaled(scale: tp.Callable | None, x: torch.Tensor) -> torch.Tensor:
    return x if scale is None else scale(x)


class CachedTransformer:
    """lm.transformer (+ out_norm and the output heads) stepping over a KVCache."""

    def __init__(self, lm):
        check_supported(lm)
        self.lm = lm
        first = lm.transformer.layers[0].self_attn
        self.heads = first.num_heads
        self.dim = first.embed_dim
        self.head_dim = self.dim // self.heads
        self.layers = [_Layer.of(layer, self.dim) for layer in lm.transformer.layers]
        self.cross_attentions = [layer.cross_attention for layer in lm.transformer.layers]
        self.cross = self.cross_attentions[0] is not None
        self.as_float32 = first.attention_as_float32
        self.max_period = lm.transformer.max_period
        self.positional_scale = lm.transformer.positional_scale
        self.embeddings = [(emb.weight, emb.padding_idx) for emb in lm.emb]
        self.out_norm = None if lm.out_norm is None else _fast(lm.out_norm)
        self.heads_out = [_fast(linear) for linear in lm.linears]

    def with_linear(self, bind: Binder) -> tuple[list[_Layer], list[tp.Callable]]:
        """The layers and output heads again, each linear map bound by `bind` (row_linear's, for
        the CPU's batched step in tokens/slots.py)."""
        layers = [_Layer.of(layer, self.dim, bind) for layer in self.lm.transformer.layers]
        return layers, [_fast(head, bind) for head in self.lm.linears]

    # ---------------------------------------------------------------- shared pieces

    def kv_dtype(self, autocast) -> torch.dtype:
        """The dtype of the keys and values (the projections' output) under `autocast` (a
        MusicGen's TorchAutocast): its float16 on a GPU, else the attention weights' own."""
        weight = self.lm.transformer.layers[0].self_attn.in_proj_weight
        if autocast.autocast is not None:
            return autocast.autocast.fast_dtype
        return weight.dtype

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
            keys.append(self._heads(F.linear(source, weight[d : 2 * d], None if bias is None else bias[d : 2 * d])))
            values.append(self._heads(F.linear(source, weight[2 * d :], None if bias is None else bias[2 * d :])))
        return CrossAttentionCache(keys, values)

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """Output heads: [B, S, dim] -> [B, K, S, card], as LMModel.forward computes them."""
        if self.out_norm is not None:
            out = self.out_norm(out)
        return torch.stack([head(out) for head in self.heads_out], dim=1)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, (h d)] -> [B, h, T, d] (a view, as einops' rearrange makes it)."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: torch.Tensor, dtype) -> torch.Tensor:
        """[B, h, T, d] -> [B, T, (h d)] in `dtype`."""
        batch, _, length, _ = x.shape
        return x.to(dtype).transpose(1, 2).reshape(batch, length, self.dim)

    def _qkv(self, layer: _Layer, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The packed projection split into q, k, v [B, h, T, d] (views, as audiocraft unbinds them)."""
        batch, length, _ = h.shape
        projected = layer.qkv(h)
        packed = projected.view(batch, length, 3, self.heads, self.head_dim).permute(0, 3, 2, 1, 4)
        return packed.unbind(dim=2)

    def _attend(self, q, k, v, **mask) -> torch.Tensor:
        if self.as_float32:
            q, k, v = q.float(), k.float(), v.float()
        return F.scaled_dot_product_attention(q, k, v, **mask)

    def _rest(self, layer: _Layer, x, h, attended, cross, index, **cross_mask) -> torch.Tensor:
        """A layer after its self-attention: residual, cross-attention, feed-forward."""
        x = x + scaled(layer.scale1, layer.out_proj(self._merge(attended, h.dtype)))
        if cross is not None:
            h = layer.norm_cross(x)
            attended = self._attend(
                self._heads(layer.cross_query(h)), cross.keys[index], cross.values[index], **cross_mask
            )
            x = x + scaled(layer.scale_cross, layer.cross_out(self._merge(attended, h.dtype)))
        return x + scaled(layer.scale2, layer.linear2(layer.activation(layer.linear1(layer.norm2(x)))))

    # ---------------------------------------------------------------- the two forms

    def forward(self, x: torch.Tensor, start: int, cache: KVCache, cross: CrossAttentionCache | None) -> torch.Tensor:
        """x [B, T, dim] (embedded, positions not yet added) at positions start..start+T-1 ->
        the transformer's output [B, T, dim]; writes the keys/values of those positions.

        T > 1 only for a window's first call (start 0): causal attention within it, as audiocraft
        does when its cache is empty.
        """
        length = x.shape[1]
        x = x + cache.positions[start : start + length]
        causal = length > 1
        for index, layer in enumerate(self.layers):
            h = layer.norm1(x)
            q, k, v = self._qkv(layer, h)
            keys, values = cache.write(index, start, k, v)
            x = self._rest(layer, x, h, self._attend(q, keys, values, is_causal=causal), cross, index)
        return x

    def step(self, tokens: torch.Tensor, position: int, cache: KVCache, cross: CrossAttentionCache | None):
        """One token per row: tokens [B, K] at `position` -> logits [B, K, card].

        forward() for T = 1 with [B, dim] activations instead of [B, 1, dim]: the same kernels on
        the same values (a [B, 1, dim] linear is this very matrix product), fewer reshapes.
        """
        batch = tokens.shape[0]
        x = self.embed(tokens[..., None])[:, 0] + cache.positions[position]
        for index, layer in enumerate(self.layers):
            h = layer.norm1(x)
            packed = layer.qkv(h).view(batch, 3, self.heads, 1, self.head_dim)
            keys, values = cache.write(index, position, packed[:, 1], packed[:, 2])
            attended = self._attend(packed[:, 0], keys, values)
            x = self.token_rest(layer, x, h, attended, cross, index)
        return self.token_logits(x)

    def token_rest(self, layer: _Layer, x, h, attended, cross, index: int, **cross_mask) -> torch.Tensor:
        """A layer after its self-attention, one token per row: x, h [R, dim], attended
        [R, h, 1, d] -> the layer's output [R, dim] (residual, cross-attention, feed-forward)."""
        rows = x.shape[0]
        x = x + scaled(layer.scale1, layer.out_proj(attended.reshape(rows, self.dim).to(h.dtype)))
        if cross is not None:
            h = layer.norm_cross(x)
            query = layer.cross_query(h).view(rows, self.heads, 1, self.head_dim)
            attended = self._attend(query, cross.keys[index], cross.values[index], **cross_mask)
            x = x + scaled(layer.scale_cross, layer.cross_out(attended.reshape(rows, self.dim).to(h.dtype)))
        return x + scaled(layer.scale2, layer.linear2(layer.activation(layer.linear1(layer.norm2(x)))))

    def token_logits(self, x: torch.Tensor, heads: list[tp.Callable] | None = None) -> torch.Tensor:
        """[R, dim] -> logits [R, K, card] (out_norm, then the heads: `heads`, or the LM's own)."""
        if self.out_norm is not None:
            x = self.out_norm(x)
        return torch.stack([head(x) for head in heads or self.heads_out], dim=1)

    def static_step(
        self,
        tokens: torch.Tensor,
        position: torch.Tensor,
        cache: KVCache,
        cross: CrossAttentionCache | None,
    ) -> torch.Tensor:
        """One step with static shapes (capturable as a CUDA graph): tokens [B, K, 1] at
        `position` (a 1-element long tensor) -> logits [B, K, 1, card].

        Attention reads the whole cache and masks the positions after `position`; cross-attention
        reads the whole (padded) cross cache and masks its padding (cross.mask).
        """
        x = self.embed(tokens) + cache.positions.index_select(0, position)
        visible = (cache.slots <= position).view(1, 1, 1, -1)
        for index, layer in enumerate(self.layers):
            h = layer.norm1(x)
            q, k, v = self._qkv(layer, h)
            cache.keys[index].index_copy_(2, position, k)
            cache.values[index].index_copy_(2, position, v)
            attended = self._attend(q, cache.keys[index], cache.values[index], attn_mask=visible)
            mask = {} if cross is None else {"attn_mask": cross.mask}
            x = self._rest(layer, x, h, attended, cross, index, **mask)
        return self.logits(x)
