"""Which loop serves a loaded model, chosen once at setup.

The MUSICGEN_TOKEN_LOOP setting: "musicgen" (the default) serves with our loop, "audiocraft" with
audiocraft's own.
On CUDA our loop is checked before it serves: the eager step's logits against the LM's own
forward pass, then the CUDA-graph step's against the eager step's, over CHECK_STEPS steps of the
same inputs. Any error or a difference beyond the dtype's Tolerance is logged with its reason and
the next loop down serves instead: CUDA graph -> eager -> audiocraft. On the CPU our eager loop is
token-exact with audiocraft's (tests/test_tokens.py), so no check runs there unless asked.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from musicgen.tokens.batching import Batcher
from musicgen.tokens.graphs import GraphedStep
from musicgen.tokens.loop import condition_tensors
from musicgen.tokens.loops import AudiocraftLoop, FastLoop, TokenLoop
from musicgen.tokens.slots import SlotStep
from musicgen.tokens.transformer import Unsupported

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


def choose_loop(
    model,
    label: str,
    choice: str = "musicgen",
    check: bool | None = None,
    tolerance: Tolerance | None = None,
    graph_tolerance: Tolerance | None = None,
    batcher: Batcher | None = None,
) -> TokenLoop:
    """The loop that serves `model` (named `label` in the logs): audiocraft's when `choice` (the
    MUSICGEN_TOKEN_LOOP setting) is "audiocraft", else ours, checked. check: run the checks (default:
    on CUDA only; on the CPU the static step runs uncaptured). tolerance, graph_tolerance: for
    the eager and the graph check, instead of the dtype's TOLERANCES entry (tests force failures).
    batcher: MUSICGEN_MAX_BATCH > 1: our loop decodes in its batch, the batched step (captured
    on CUDA) taking the place of the one-window graph, and checked the same way."""
    if choice == "audiocraft":
        log.info("%s: decoding with audiocraft's loop (MUSICGEN_TOKEN_LOOP=audiocraft)", label)
        return _served(AudiocraftLoop(model), "MUSICGEN_TOKEN_LOOP=audiocraft")
    try:
        fast = FastLoop(model)
    except Unsupported as why:
        log.warning("%s: decoding with audiocraft's loop; ours does not handle this LM: %s", label, why)
        return _served(AudiocraftLoop(model), f"ours does not handle this LM: {why}")
    except Exception as why:  # noqa: BLE001 (an LM our code cannot even read: serve it with the stock loop)
        log.warning("%s: decoding with audiocraft's loop; ours could not be set up: %s", label, _reason(why))
        return _served(AudiocraftLoop(model), f"ours could not be set up: {_reason(why)}")
    on_cuda = torch.device(model.device).type == "cuda"
    if not (on_cuda if check is None else check):
        if batcher is not None:
            with torch.no_grad():
                batcher.add_model(fast, SlotStep(fast.transformer, model, batcher.slots, static=False))
        log.info(
            "%s: decoding with our loop (%s, on %s)", label, "eager" if batcher is None else fast.form, model.device
        )
        return _served(fast, f"not checked on {model.device} (the checks run on CUDA)")
    checks: dict[str, str] = {}
    default = TOLERANCES.get(fast.transformer.kv_dtype(model.autocast), TOLERANCES[torch.float16])
    tolerance, graph_tolerance = tolerance or default, graph_tolerance or default
    start = time.perf_counter()
    try:
        inputs = check_inputs(model)
        reference = reference_logits(model, *inputs)
        eager = loop_logits(model, fast, None, *inputs)
        checks["our eager step vs the LM's forward pass"] = _compare(
            "our eager step", eager, "the LM's forward pass", reference, tolerance
        )
    except Exception as why:  # noqa: BLE001 (any failure of code no GPU ran before: serve with the stock loop)
        log.warning("%s: decoding with audiocraft's loop; our loop failed its check: %s", label, _reason(why))
        return _served(AudiocraftLoop(model), f"our loop failed its check: {_reason(why)}", checks)
    if batcher is not None:
        return _batched(fast, model, label, batcher, on_cuda, inputs, eager, graph_tolerance, checks, start)
    try:
        with torch.no_grad():  # no autograd state captured; buffers still writable in and out of inference_mode
            graph = GraphedStep(fast.transformer, model, capture=on_cuda)
        graphed = loop_logits(model, fast, graph, *inputs)
        step = "the CUDA-graph step" if on_cuda else "the static step"
        checks[f"{step} vs the eager step"] = _compare(step, graphed, "the eager step", eager, graph_tolerance)
    except Exception as why:  # noqa: BLE001
        log.warning("%s: decoding with our eager loop; the CUDA-graph step failed its check: %s", label, _reason(why))
        return _served(fast, f"the CUDA-graph step failed its check: {_reason(why)}", checks)
    fast.graph = graph
    return _checked(fast, label, start, graph.nbytes, checks)


def _batched(fast, model, label, batcher, on_cuda, inputs, eager, tolerance, checks, start) -> TokenLoop:
    """The checked batched step serving `fast` in `batcher`; the eager loop when it fails."""
    try:
        with torch.no_grad():
            slot_step = SlotStep(fast.transformer, model, batcher.slots, static=on_cuda, capture=on_cuda)
        batched = slot_logits(model, fast, slot_step, *inputs)
        step = f"the batched step ({batcher.slots} slots{', a CUDA graph' if on_cuda else ''})"
        checks[f"{step} vs the eager step"] = _compare(step, batched, "the eager step", eager, tolerance)
    except Exception as why:  # noqa: BLE001
        log.warning("%s: decoding one prediction at a time; the batched step failed its check: %s", label, _reason(why))
        return _served(fast, f"the batched step failed its check: {_reason(why)}", checks)
    batcher.add_model(fast, slot_step)
    return _checked(fast, label, start, slot_step.nbytes, checks)


def _checked(fast: FastLoop, label: str, start: float, static_bytes: int, checks: dict[str, str]) -> TokenLoop:
    """`fast`, its checks passed, with the log line saying how it serves."""
    log.info(
        "%s: decoding with our loop, %s (checked in %.1f s; static buffers %.0f MB)",
        label,
        fast.form,
        time.perf_counter() - start,
        static_bytes / 2**20,
    )
    return _served(fast, "both checks passed", checks)


def _served(loop: TokenLoop, why: str, checks: dict[str, str] | None = None) -> TokenLoop:
    """`loop`, with why it serves and the set-up checks' figures (read by the GPU check's bench)."""
    loop.why, loop.checks = why, dict(checks or {})
    return loop


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


def loop_logits(model, fast: FastLoop, graph: GraphedStep | None, tensors: dict, tokens: torch.Tensor):
    """Our loop's logits for the same sequence, one step at a time: [2, K, S, card]."""
    t = fast.transformer
    with torch.inference_mode(), model.autocast:
        embedded, cross_source = model.lm.fuser(t.embed(tokens[..., :1]), tensors)
        prefix = embedded.shape[1] - 1
        cross = t.cross_cache(cross_source)
        if graph is None:
            cache, step = fast.cache(2, prefix + tokens.shape[-1], embedded), fast.eager_step
        else:
            if not graph.takes(cross):
                raise CheckFailed("the check's text does not fit the captured step")
            cache, step = graph.cache, graph.step
            cache.clear()
        logits = [t.logits(t.forward(embedded, 0, cache, cross))[:, :, -1]]
        for index in range(1, tokens.shape[-1]):
            logits.append(step(tokens[..., index], prefix + index, cache, cross).clone())
        return torch.stack(logits, dim=2).float()


def slot_logits(model, fast: FastLoop, slot_step: SlotStep, tensors: dict, tokens: torch.Tensor):
    """The same sequence through the batched step, in its last slot beside free ones: [2, K, S, card]."""
    t = fast.transformer
    slot = slot_step.slots - 1
    with torch.inference_mode(), model.autocast:
        embedded, cross_source = model.lm.fuser(t.embed(tokens[..., :1]), tensors)
        prefix = embedded.shape[1] - 1
        cross = t.cross_cache(cross_source)
        cache = fast.cache(2, prefix + 1, embedded)
        logits = [t.logits(t.forward(embedded, 0, cache, cross))[:, :, -1]]
        if not slot_step.takes_text(cross):
            raise CheckFailed("the check's text does not fit the batched step")
        rows = slice(2 * slot, 2 * slot + 2)
        slot_step.cache.clear()
        slot_step.load(slot, cache, prefix + 1, cross)
        for index in range(1, tokens.shape[-1]):
            slot_step.feed(slot, tokens[..., index], prefix + index)
            logits.append(slot_step.step()[rows].clone())
        for free in range(slot_step.slots):
            slot_step.free(free)
        return torch.stack(logits, dim=2).float()


def _compare(name: str, ours: torch.Tensor, reference_name: str, reference: torch.Tensor, tolerance: Tolerance) -> str:
    """CheckFailed past the tolerance; else the measured difference against it, in words."""
    if not torch.isfinite(ours).all():
        raise CheckFailed(f"{name} gave non-finite logits")
    difference, bound = (ours - reference).abs().max().item(), tolerance.bound(reference)
    if not difference <= bound:
        raise CheckFailed(f"{name} differs from {reference_name} by {difference:.3g} (allowed {bound:.3g})")
    log.debug("%s vs %s: max |difference| %.3g (allowed %.3g)", name, reference_name, difference, bound)
    return f"max |difference| {difference:.3g} (allowed {bound:.3g})"


def _reason(error: Exception) -> str:
    return str(error) if isinstance(error, CheckFailed) else f"{type(error).__name__}: {error}"
