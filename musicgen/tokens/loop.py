"""One window of generation: what `LMModel.generate` does, over a preallocated cache.

Same conditions (the conditional and null conditions in one batch, computed once), same codebook
pattern (audiocraft's own pattern objects), same sampling in the same order; the per-step work is
one call of the cached transformer (or a CUDA-graph replay, graphs.py) and the sampling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout, ConditioningAttributes

from musicgen.tokens.cache import CrossAttentionCache, KVCache
from musicgen.tokens.sampling import Sampling, guided, next_token
from musicgen.tokens.transformer import CachedTransformer

UNKNOWN_TOKEN = -1  # what audiocraft fills not-yet-generated codes with

# One step after the prefill: (tokens [B', K], position, cache, cross) -> logits [B', K, card]
Step = Callable[[torch.Tensor, int, KVCache, CrossAttentionCache | None], torch.Tensor]


class Engine(Protocol):
    """Where a window's cache comes from and which step function runs it (decoders.FastLoop)."""

    def cache(self, batch: int, length: int, like: torch.Tensor) -> KVCache: ...

    def stepper(self, cache: KVCache, cross: CrossAttentionCache | None) -> Step: ...


NEGATIVE_CONDITION = "description"  # the text attribute a negative prompt fills in the null half


def condition_tensors(lm, conditions: list[ConditioningAttributes], negative: str | None = None) -> dict:
    """The conditional and null (dropped) conditions as one batch, as LMModel.generate builds them;
    with a `negative` prompt the null half's text is that prompt (its other conditions, a melody's
    chroma, stay dropped): classifier-free guidance then steers away from it."""
    if not conditions:
        return {}
    null_conditions = ClassifierFreeGuidanceDropout(p=1.0)(conditions)  # deep copies
    if negative:
        for null in null_conditions:
            null.text[NEGATIVE_CONDITION] = negative
    return lm.condition_provider(lm.condition_provider.tokenize(conditions + null_conditions))


def steps_in_window(lm, max_gen_len: int, prompt_len: int) -> int:
    """How many LM steps a window generating up to max_gen_len frames after prompt_len takes."""
    pattern = lm.pattern_provider.get_pattern(max_gen_len)
    return len(pattern.layout) - pattern.get_first_step_with_timesteps(prompt_len)


class Window:
    """Tokens [B, K, max_gen_len] continuing `prompt` under `conditions`, one window."""

    def __init__(self, transformer: CachedTransformer, engine: Engine):
        self.transformer = transformer
        self.lm = transformer.lm
        self.engine = engine

    def generate(
        self,
        prompt: torch.Tensor | None,
        conditions: list[ConditioningAttributes],
        max_gen_len: int,
        sampling: Sampling,
        on_step: Callable[[], None],
        negative: str | None = None,
    ) -> torch.Tensor:
        lm = self.lm
        device = next(iter(lm.parameters())).device
        tensors = condition_tensors(lm, conditions, negative)
        batch = len(conditions) or 1
        if prompt is None:
            prompt = torch.zeros((batch, lm.num_codebooks, 0), dtype=torch.long, device=device)
        start = prompt.shape[-1]
        assert start < max_gen_len
        pattern = lm.pattern_provider.get_pattern(max_gen_len)
        codes = torch.full((batch, lm.num_codebooks, max_gen_len), UNKNOWN_TOKEN, dtype=torch.long, device=device)
        codes[..., :start] = prompt
        sequence, _, mask = pattern.build_pattern_sequence(codes, lm.special_token_id)
        first = pattern.get_first_step_with_timesteps(start)
        cfg_coef = sampling.cfg_coef if tensors else None

        # The prefill: every known step at once, conditions fused (a prefix is prepended here).
        tokens = sequence[..., :first]
        if tensors:
            tokens = torch.cat([tokens, tokens], dim=0)
        embedded, cross_source = lm.fuser(self.transformer.embed(tokens), tensors)
        prefix = embedded.shape[1] - first
        length = embedded.shape[1] + sequence.shape[-1] - first - 1  # positions the window writes
        cache = self.engine.cache(embedded.shape[0], length, embedded)
        cross = self.transformer.cross_cache(cross_source)
        logits = self.transformer.logits(self.transformer.forward(embedded, 0, cache, cross))[:, :, -1]
        step = self.engine.stepper(cache, cross)
        # Columns where every code is still to generate (all but the pattern's edges and the
        # prompt's): the sampled column is written as it is and is the next step's input.
        open_columns = (sequence == UNKNOWN_TOKEN).all(dim=1).all(dim=0).tolist()
        last = sequence.shape[-1] - 1
        for offset in range(first, last + 1):
            token = next_token(guided(logits, batch, cfg_coef), sampling)
            if open_columns[offset]:
                sequence[..., offset] = token[..., 0]
                column = token[..., 0]
            else:
                column = sequence[..., offset]
                column.copy_(torch.where(column == UNKNOWN_TOKEN, token[..., 0], column))
            on_step()
            if offset < last:  # the column just written is the next step's input
                logits = step(torch.cat([column, column]) if tensors else column, prefix + offset, cache, cross)

        assert not (sequence == UNKNOWN_TOKEN).any()
        assert (sequence == torch.where(mask[None].expand(batch, -1, -1), sequence, lm.special_token_id)).all()
        out_codes, _, out_mask = pattern.revert_pattern_sequence(sequence, special_token=UNKNOWN_TOKEN)
        assert (out_codes[..., :max_gen_len] != UNKNOWN_TOKEN).all()
        assert (out_mask[..., :max_gen_len] == 1).all()
        out_codes = out_codes[..., :max_gen_len]
        assert (out_codes >= 0).all() and (out_codes <= lm.card).all()
        return out_codes
