"""The set-up checks of our token loop: its logits against the LM's own forward pass, and a static
or batched step's against the eager step's, over CHECK_STEPS steps of the same inputs, within the
dtype's Tolerance (musicgen.tokens.choose runs them on CUDA, where kernels round differently)."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch

from musicgen.tokens.adapters import TARGETS, Adapted, LowRank, target_weight, whole
from musicgen.tokens.graphs import GraphedStep
from musicgen.tokens.loop import condition_tensors
from musicgen.tokens.loops import FastLoop
from musicgen.tokens.slots import SlotStep

log = logging.getLogger(__name__)

CHECK_STEPS = 8
CHECK_PROMPT = "warm-up check"


@dataclass(frozen=True)
class Tolerance:
    """Allowed max |ours - reference| over all logits: atol + rtol * max |reference|."""

    atol: float
    rtol: float

    def bound(self, reference: torch.Tensor) -> float:
        return self.atol + self.rtol * reference.abs().max().item()


TOLERANCES = {
    torch.float32: Tolerance(1e-3, 1e-4),
    torch.float16: Tolerance(5e-2, 1e-2),
    torch.bfloat16: Tolerance(1e-1, 2e-2),
}


class CheckFailed(Exception):
    """A loop's logits differ from the reference's by more than the tolerance."""


def check_inputs(model) -> tuple[dict, torch.Tensor]:
    """Conditions for a short prompt and CHECK_STEPS random tokens (a private generator: the
    global random state is left as it was), as the guidance batch of two."""
    lm = model.lm
    attributes, _ = model._prepare_tokens_and_attributes([CHECK_PROMPT], None)
    with torch.inference_mode(), model.autocast:
        tensors = condition_tensors(lm, attributes)
    generator = torch.Generator(device="cpu").manual_seed(0)
    tokens = torch.randint(0, lm.card, (1, lm.num_codebooks, CHECK_STEPS), generator=generator)
    return tensors, torch.cat([tokens, tokens]).to(model.device)


def reference_logits(model, tensors: dict, tokens: torch.Tensor) -> torch.Tensor:
    """audiocraft's LMModel.forward over the whole sequence: [2, K, S, card]."""
    with torch.inference_mode(), model.autocast:
        return model.lm(tokens, [], condition_tensors=tensors).float()


def check_adapter(lm, rank: int, seed: int = 0, lora_scale: float = 1.0) -> Adapted:
    """A random (untrained) rank-`rank` adapter of every target of `lm`'s layers, on its device
    and in its dtype, from a private generator: for the checks with an adapter, and the tests."""
    generator = torch.Generator().manual_seed(seed)
    pairs = {}
    for index, layer in enumerate(lm.transformer.layers):
        for target in TARGETS:
            weight = target_weight(layer, target)
            out, inner = weight.shape
            down = torch.randn(rank, inner, generator=generator) * inner**-0.5
            up = torch.randn(out, rank, generator=generator) * rank**-0.5
            pairs[index, target] = (down.to(weight.device, weight.dtype), up.to(weight.device, weight.dtype))
    return Adapted.of(LowRank(pairs, rank, 1.0), lora_scale)


def loop_logits(
    model,
    fast: FastLoop,
    graph: GraphedStep | None,
    tensors: dict,
    tokens: torch.Tensor,
    adapted: Adapted | None = None,
):
    """Our loop's logits for the same sequence, one step at a time: [2, K, S, card] (every row
    adapted by `adapted`: the eager step only)."""
    t = fast.transformer
    layers = None if adapted is None else whole(t.layers, adapted)
    with torch.inference_mode(), model.autocast:
        embedded, cross_source = model.lm.fuser(t.embed(tokens[..., :1]), tensors)
        prefix = embedded.shape[1] - 1
        cross = t.cross_cache(cross_source)
        if graph is None:
            cache, step = (
                fast.cache(2, prefix + tokens.shape[-1], embedded),
                functools.partial(fast.eager_step, layers=layers),
            )
        else:
            if not graph.takes(cross):
                raise CheckFailed("the check's text does not fit the captured step")
            cache, step = graph.cache, graph.step
            cache.clear()
        logits = [t.logits(t.forward(embedded, 0, cache, cross, layers))[:, :, -1]]
        for index in range(1, tokens.shape[-1]):
            logits.append(step(tokens[..., index], prefix + index, cache, cross).clone())
        return torch.stack(logits, dim=2).float()


def slot_logits(
    model, fast: FastLoop, slot_step: SlotStep, tensors: dict, tokens: torch.Tensor, adapted: Adapted | None = None
):
    """The same sequence through the batched step, in its last slot beside free ones: [2, K, S, card]
    (that slot adapted by `adapted`)."""
    t = fast.transformer
    layers = None if adapted is None else whole(t.layers, adapted)
    slot = slot_step.slots - 1
    with torch.inference_mode(), model.autocast:
        embedded, cross_source = model.lm.fuser(t.embed(tokens[..., :1]), tensors)
        prefix = embedded.shape[1] - 1
        cross = t.cross_cache(cross_source)
        cache = fast.cache(2, prefix + 1, embedded)
        logits = [t.logits(t.forward(embedded, 0, cache, cross, layers))[:, :, -1]]
        if not slot_step.takes_text(cross):
            raise CheckFailed("the check's text does not fit the batched step")
        rows = slice(2 * slot, 2 * slot + 2)
        slot_step.cache.clear()
        slot_step.load(slot, cache, prefix + 1, cross, adapted)
        for index in range(1, tokens.shape[-1]):
            slot_step.feed(slot, tokens[..., index], prefix + index)
            logits.append(slot_step.step()[rows].clone())
        for free in range(slot_step.slots):
            slot_step.free(free)
        return torch.stack(logits, dim=2).float()


def compare(name: str, ours: torch.Tensor, reference_name: str, reference: torch.Tensor, tolerance: Tolerance) -> str:
    """CheckFailed past the tolerance; else the measured difference against it, in words."""
    if not torch.isfinite(ours).all():
        raise CheckFailed(f"{name} gave non-finite logits")
    difference, bound = (ours - reference).abs().max().item(), tolerance.bound(reference)
    if not difference <= bound:
        raise CheckFailed(f"{name} differs from {reference_name} by {difference:.3g} (allowed {bound:.3g})")
    log.debug("%s vs %s: max |difference| %.3g (allowed %.3g)", name, reference_name, difference, bound)
    return f"max |difference| {difference:.3g} (allowed {bound:.3g})"


def reason(error: Exception) -> str:
    return str(error) if isinstance(error, CheckFailed) else f"{type(error).__name__}: {error}"
