"""A MusicGen transformer layer's arithmetic, written once, over the LM's own modules bound once.

Every form of the step runs `run_layers`; the forms differ only in what they plug in:
- the self-attention (musicgen.tokens.attention): how it reads and writes the key/value cache (a
  window's prefill, one token per row, each row at its own position with a mask, per slot);
- the text's cross-attention: whole, masked (padded to a fixed length), or per slot;
- the linear maps, bound into each BoundLayer by a Binder: F.linear (the stock layer's, token-exact
  with audiocraft), or for the CPU's batched step one of musicgen.tokens.row_linear's.

Only the released MusicGen LMs' layer is written here (pre-norm, packed self-attention, optional
cross-attention, optional layer scales); musicgen.tokens.transformer checks an LM has it.
"""

from __future__ import annotations

import functools
import typing as tp

import torch
import torch.nn.functional as F
from torch import nn

Linear = tp.Callable[[torch.Tensor], torch.Tensor]
Binder = tp.Callable[[torch.Tensor, torch.Tensor | None], Linear]  # (weight, bias) -> x [..., in] -> [..., out]


class SelfAttention(tp.Protocol):
    """Layer `index`'s self-attention: the packed projection [..., 3 * dim] of the normed input ->
    the attended values merged back to [..., dim] in `dtype`, the cache read and written."""

    def __call__(self, index: int, projected: torch.Tensor, dtype: torch.dtype) -> torch.Tensor: ...


class TextAttention(tp.Protocol):
    """Layer `index`'s cross-attention to the text: its query [..., dim] -> [..., dim] in `dtype`."""

    def __call__(self, index: int, query: torch.Tensor, dtype: torch.dtype) -> torch.Tensor: ...


def bind_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> Linear:
    """F.linear over the module's own weight, as the stock layer computes it (the one-window
    step's, token-exact with audiocraft; musicgen.tokens.row_linear has the batched step's)."""
    return lambda x: F.linear(x, weight, bias)


def fast(module: nn.Module, bind: Binder = bind_linear) -> Linear | None:
    """The module's own computation without nn.Module's call machinery (which costs more than a
    small kernel), or None for an identity; any other module is called as it is. `bind`: how a
    Linear is computed."""
    if isinstance(module, nn.Identity):
        return None
    if type(module) is nn.LayerNorm:
        shape, weight, bias, eps = module.normalized_shape, module.weight, module.bias, module.eps
        return lambda x: F.layer_norm(x, shape, weight, bias, eps)
    if type(module) is nn.Linear:
        return bind(module.weight, module.bias)
    return module


class BoundLayer(tp.NamedTuple):
    """One transformer layer's pieces, bound once (the weights are the module's own tensors)."""

    norm1: Linear
    qkv: Linear  # the packed self-attention projection: x -> [q k v]
    out_proj: Linear
    scale1: Linear | None
    norm_cross: Linear | None
    cross_query: Linear | None
    cross_out: Linear | None
    scale_cross: Linear | None
    norm2: Linear
    linear1: Linear
    activation: Linear
    linear2: Linear
    scale2: Linear | None

    @classmethod
    def of(cls, layer, dim: int, bind: Binder = bind_linear) -> BoundLayer:
        attention, cross = layer.self_attn, layer.cross_attention
        cross_query = None
        if cross is not None:
            bias = None if cross.in_proj_bias is None else cross.in_proj_bias[:dim]
            cross_query = bind(cross.in_proj_weight[:dim], bias)
        bound = functools.partial(fast, bind=bind)
        return cls(
            norm1=bound(layer.norm1),
            qkv=bind(attention.in_proj_weight, attention.in_proj_bias),
            out_proj=bound(attention.out_proj),
            scale1=bound(layer.layer_scale_1),
            norm_cross=None if cross is None else bound(layer.norm_cross),
            cross_query=cross_query,
            cross_out=None if cross is None else bound(cross.out_proj),
            scale_cross=None if cross is None else bound(layer.layer_scale_cross),
            norm2=bound(layer.norm2),
            linear1=bound(layer.linear1),
            activation=layer.activation,
            linear2=bound(layer.linear2),
            scale2=bound(layer.layer_scale_2),
        )


def scaled(scale: Linear | None, x: torch.Tensor) -> torch.Tensor:
    return x if scale is None else scale(x)


def run_layers(
    layers: list[BoundLayer], x: torch.Tensor, attention: SelfAttention, text: TextAttention | None
) -> torch.Tensor:
    """x [..., dim] (embedded, positions added) through every layer: pre-norm self-attention, then
    cross-attention to the text (when the LM has it), then the feed-forward block, each added to
    the residual through its layer scale. The one definition of the layer's arithmetic."""
    for index, layer in enumerate(layers):
        h = layer.norm1(x)
        x = x + scaled(layer.scale1, layer.out_proj(attention(index, layer.qkv(h), h.dtype)))
        if text is not None:
            h = layer.norm_cross(x)
            x = x + scaled(layer.scale_cross, layer.cross_out(text(index, layer.cross_query(h), h.dtype)))
        x = x + scaled(layer.scale2, layer.linear2(layer.activation(layer.linear1(layer.norm2(x)))))
    return x
