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

from musicgen.tokens.adapters import Adapted, whole
from musicgen.tokens.cache import CrossAttentionCache, KVCache
from musicgen.tokens.sampling import Sampling, guided, next_token
from musicgen.tokens.transformer import CachedTransformer

UNKNOWN_TOKEN = -1  # what audiocraft fills not-yet-generated codes with

# One step after the prefill: (tokens [B', K], position, cache, cross) -> logits [B', K, card]
Step = Callable[[torch.Tensor, int, KVCache, CrossAttentionCache | None], torch.Tensor]


class Engine(Protocol):
    """Where a window's cache comes from and which step function runs it (loops.FastLoop)."""

    def cache(self, batch: int, length: int, like: torch.Tensor) -> KVCache: ...

    def stepper(self, cache: KVCache, cross: CrossAttentionCache | None, layers: list | None) -> Step: ...


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


class WindowState:
    """A window after its prefill: the pattern sequence being filled, the cache and the logits
    of the next step. `take()` writes a sampled token and says what the next step reads."""

    def __init__(
        self, lm, sequence, mask, pattern, max_gen_len, first, batch, guided_rows, prefix, cache, cross, logits,
        adapted: Adapted | None = None, layers: list | None = None,
    ):  # fmt: skip
        self.lm = lm
        self.adapted = adapted  # the request's low-rank adapter, at its scale (None: the base model)
        self.layers = layers  # the bound layers adapted by it, for the steps run here (None: the LM's own)
        self.max_gen_len = max_gen_len
        self.sequence, self.mask, self.pattern = sequence, mask, pattern
        self.batch = batch  # the window's own rows (guidance doubles them in the cache)
        self.guided = guided_rows  # whether the cache holds conditional and null rows
        self.prefix = prefix  # positions of the fused condition before the pattern steps
        self.cache, self.cross, self.logits = cache, cross, logits
        self.offset = first  # the pattern step whose token the logits give
        self.last = sequence.shape[-1] - 1
        # Columns where every code is still to generate (all but the pattern's edges and the
        # prompt's): the sampled column is written as it is and is the next step's input.
        self.open_columns = (sequence == UNKNOWN_TOKEN).all(dim=1).all(dim=0).tolist()

    @property
    def positions(self) -> int:
        """Cache positions the whole window writes (the prefill's and every step's)."""
        return self.prefix + self.last

    def take(self, token: torch.Tensor) -> tuple[torch.Tensor, int] | None:
        """Write `token` [B, K, 1] at the current step; return the next step's input (the column
        just written, doubled for guidance) and its cache position, or None after the last step."""
        offset = self.offset
        if self.open_columns[offset]:
            self.sequence[..., offset] = token[..., 0]
            column = token[..., 0]
        else:
            column = self.sequence[..., offset]
            column.copy_(torch.where(column == UNKNOWN_TOKEN, token[..., 0], column))
        self.offset += 1
        if offset == self.last:
            return None
        return (torch.cat([column, column]) if self.guided else column), self.prefix + offset

    def codes(self) -> torch.Tensor:
        """The finished window's tokens [B, K, max_gen_len] (the pattern reverted)."""
        sequence, lm, batch = self.sequence, self.lm, self.batch
        assert not (sequence == UNKNOWN_TOKEN).any()
        assert (sequence == torch.where(self.mask[None].expand(batch, -1, -1), sequence, lm.special_token_id)).all()
        out_codes, _, out_mask = self.pattern.revert_pattern_sequence(sequence, special_token=UNKNOWN_TOKEN)
        max_gen_len = self.max_gen_len
        assert (out_codes[..., :max_gen_len] != UNKNOWN_TOKEN).all()
        assert (out_mask[..., :max_gen_len] == 1).all()
        out_codes = out_codes[..., :max_gen_len]
        assert (out_codes >= 0).all() and (out_codes <= lm.card).all()
        return out_codes


class Window:
    """Tokens [B, K, max_gen_len] continuing `prompt` under `conditions`, one window."""

    def __init__(self, transformer: CachedTransformer, engine: Engine):
        self.transformer = transformer
        self.lm = transformer.lm
        self.engine = engine

    def start(
        self,
        prompt: torch.Tensor | None,
        conditions: list[ConditioningAttributes],
        max_gen_len: int,
        negative: str | None = None,
        cache: Callable[[int, int, torch.Tensor], KVCache] | None = None,
        adapted: Adapted | None = None,
    ) -> WindowState:
        """The prefill: every known step at once, conditions fused (a prefix is prepended here),
        into `cache(batch, length, like)` (default: the engine's); every row adapted by `adapted`."""
        lm = self.lm
        layers = None if adapted is None else whole(self.transformer.layers, adapted)
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
        tokens = sequence[..., :first]
        if tensors:
            tokens = torch.cat([tokens, tokens], dim=0)
        embedded, cross_source = lm.fuser(self.transformer.embed(tokens), tensors)
        prefix = embedded.shape[1] - first
        length = embedded.shape[1] + sequence.shape[-1] - first - 1  # positions the window writes
        kv = (cache or self.engine.cache)(embedded.shape[0], length, embedded)
        cross = self.transformer.cross_cache(cross_source)
        logits = self.transformer.logits(self.transformer.forward(embedded, 0, kv, cross, layers))[:, :, -1]
        return WindowState(
            lm, sequence, mask, pattern, max_gen_len, first, batch, bool(tensors), prefix, kv, cross, logits,
            adapted, layers,
        )  # fmt: skip

    def generate(
        self,
        prompt: torch.Tensor | None,
        conditions: list[ConditioningAttributes],
        max_gen_len: int,
        sampling: Sampling,
        on_step: Callable[[], None],
        negative: str | None = None,
        generator: torch.Generator | None = None,
        adapted: Adapted | None = None,
    ) -> torch.Tensor:
        state = self.start(prompt, conditions, max_gen_len, negative, adapted=adapted)
        return self.finish(state, sampling, on_step, generator)

    def finish(
        self, state: WindowState, sampling: Sampling, on_step: Callable[[], None], generator=None
    ) -> torch.Tensor:
        """Every step of a started window, one at a time (the engine's step): its tokens."""
        cfg_coef = sampling.cfg_coef if state.guided else None
        step = self.engine.stepper(state.cache, state.cross, state.layers)
        logits = state.logits
        while True:
            following = state.take(next_token(guided(logits, state.batch, cfg_coef), sampling, generator))
            on_step()
            if following is None:
                return state.codes()
            logits = step(*following, state.cache, state.cross)
