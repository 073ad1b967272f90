"""What a model takes, known before it loads: its LM's bytes on a device (with its token loop's
static buffers) and its codebook size, read from the checkpoint without loading its weights;
and what a loaded token loop holds beside the weights. The memory budget plans with these."""

from __future__ import annotations

from pathlib import Path

import omegaconf

from musicgen.models.checkpoints import read_lm_checkpoint
from musicgen.tokens.batching import Batcher
from musicgen.tokens.graphs import static_cache_bytes
from musicgen.tokens.loops import TokenLoop
from musicgen.tokens.slots import ROWS_PER_SLOT


def lm_card(path: Path) -> int:
    """The codebook size an LM checkpoint's config states (read without loading its weights)."""
    return int(omegaconf.OmegaConf.create(read_lm_checkpoint(path)["xp.cfg"]).transformer_lm.card)


def lm_bytes(path: Path, device: str, max_batch: int = 1) -> int:
    """The bytes an LM checkpoint takes once loaded on `device`, read from its tensors' shapes:
    float32 on a CPU; on CUDA the transformer in float16 and the embeddings and heads in float32
    (audiocraft's load_lm_model), plus its token loop's static cache (graphs.static_cache_bytes):
    with `max_batch` N > 1 the batch's N slots (two rows each, float32 on a CPU), else on CUDA the
    one-window graph's. With N > 1 the cache counts the texts' padded keys and values, which on a
    CPU stand for each slot's own text; there the batched step also keeps its packed copy of the
    linear weights it steps with (tokens/row_linear.py)."""
    package = read_lm_checkpoint(path)
    cuda = device.startswith("cuda")
    total = 0
    for name, tensor in package["best_state"].items():
        half = cuda and name.startswith("transformer.")
        total += tensor.numel() * (2 if half else 4)
        if max_batch > 1 and not cuda:
            total += _stepped_weight_elements(name, tensor) * 4
    cfg = omegaconf.OmegaConf.create(package["xp.cfg"])
    if max_batch > 1:
        total += static_cache_bytes(cfg, batch=ROWS_PER_SLOT * max_batch, element_bytes=2 if cuda else 4)
    elif cuda:
        total += static_cache_bytes(cfg)
    return total


def _stepped_weight_elements(name: str, tensor) -> int:
    """How many of a checkpoint tensor's elements a step multiplies by: the self-attention's
    projections, the cross-attention's query (a third of its packed projection) and output, the
    feed-forward and the output heads; the keys and values of the text are computed once."""
    if not name.endswith("weight") or "norm" in name or name.startswith(("emb.", "condition_provider.")):
        return 0
    if "cross_attention.in_proj" in name:
        return tensor.numel() // 3
    return tensor.numel()


def static_bytes(loop: TokenLoop, batcher: Batcher | None) -> int:
    """What `loop` holds beside the LM's weights: its batched step's (slots, and on a CPU the
    packed weights), or its CUDA graph's cache."""
    step = None if batcher is None else batcher.step_of(loop)
    if step is not None:
        return step.nbytes
    graph = getattr(loop, "graph", None)
    return 0 if graph is None else graph.nbytes
