"""Which token loop serves a loaded model, and which form of its step: the choice rule, in one place.

The MUSICGEN_TOKEN_LOOP setting: "musicgen" (the default) serves with our loop, "audiocraft" with
audiocraft's own (also for an LM our loop does not handle). Then, by device (docs/batching.md
has the table):
- one window at a time (MUSICGEN_MAX_BATCH = 1): on CUDA the masked step captured as a CUDA graph
  (graphs.GraphedStep), on the CPU the eager step, token-exact with audiocraft's;
- batched (N > 1): on CUDA the masked slots captured as a graph (slots.MaskedSlots), on the CPU
  the per-slot rows (slots.PerSlotRows) with oneDNN's packed linear maps, else MKL's wide product,
  over the occupied slots' rows where the occupancy check passes, else over every slot's.
On CUDA the choice is checked before it serves (musicgen.tokens.checks): the eager step against the
LM's own forward pass, the graph or batched step against the eager step. A failed check is logged
with its reason and the next form down serves: graph -> eager -> audiocraft's loop; batched ->
one at a time. On the CPU no check runs unless asked (the eager loop is token-exact; the batched
form's own occupancy check always runs).
"""

from __future__ import annotations

import logging
import time

import torch

from musicgen.tokens.batching import Batcher
from musicgen.tokens.checks import (
    TOLERANCES,
    Tolerance,
    check_adapter,
    check_inputs,
    compare,
    loop_logits,
    reason,
    reference_logits,
    slot_logits,
)
from musicgen.tokens.graphs import GraphedStep
from musicgen.tokens.loops import AudiocraftLoop, FastLoop, TokenLoop
from musicgen.tokens.row_linear import PackedBinder, bind_wide, packing_works
from musicgen.tokens.slots import ROWS_PER_SLOT, MaskedSlots, PerSlotRows, SlotStep
from musicgen.tokens.transformer import CachedTransformer, Unsupported

log = logging.getLogger(__name__)


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
        log.warning("%s: decoding with audiocraft's loop; ours could not be set up: %s", label, reason(why))
        return _served(AudiocraftLoop(model), f"ours could not be set up: {reason(why)}")
    on_cuda = torch.device(model.device).type == "cuda"
    if not (on_cuda if check is None else check):
        if batcher is not None:
            with torch.no_grad():
                batcher.add_model(fast, batched_step(fast.transformer, model, batcher.slots, masked=False))
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
        checks["our eager step vs the LM's forward pass"] = compare(
            "our eager step", eager, "the LM's forward pass", reference, tolerance
        )
    except Exception as why:  # noqa: BLE001 (any failure of code no GPU ran before: serve with the stock loop)
        log.warning("%s: decoding with audiocraft's loop; our loop failed its check: %s", label, reason(why))
        return _served(AudiocraftLoop(model), f"our loop failed its check: {reason(why)}", checks)
    if batcher is not None:
        return _batched(fast, model, label, batcher, on_cuda, inputs, eager, graph_tolerance, checks, start)
    try:
        with torch.no_grad():  # no autograd state captured; buffers still writable in and out of inference_mode
            graph = GraphedStep(fast.transformer, model, capture=on_cuda)
        graphed = loop_logits(model, fast, graph, *inputs)
        step = "the CUDA-graph step" if on_cuda else "the static step"
        checks[f"{step} vs the eager step"] = compare(step, graphed, "the eager step", eager, graph_tolerance)
    except Exception as why:  # noqa: BLE001
        log.warning("%s: decoding with our eager loop; the CUDA-graph step failed its check: %s", label, reason(why))
        return _served(fast, f"the CUDA-graph step failed its check: {reason(why)}", checks)
    fast.graph = graph
    return _checked(fast, label, start, graph.nbytes, checks)


def _batched(fast, model, label, batcher, on_cuda, inputs, eager, tolerance, checks, start) -> TokenLoop:
    """The checked batched step serving `fast` in `batcher`; the eager loop when it fails."""
    try:
        with torch.no_grad():
            slot_step = batched_step(
                fast.transformer,
                model,
                batcher.slots,
                masked=on_cuda,
                capture=on_cuda,
                adapter_rank=batcher.adapter_rank,
            )
        batched = slot_logits(model, fast, slot_step, *inputs)
        step = f"the batched step ({batcher.slots} slots{', a CUDA graph' if on_cuda else ''})"
        checks[f"{step} vs the eager step"] = compare(step, batched, "the eager step", eager, tolerance)
        if isinstance(slot_step, MaskedSlots) and slot_step.adapters is not None:  # buffers the graph reads
            adapted = check_adapter(model.lm, slot_step.adapters.rank)
            batched = slot_logits(model, fast, slot_step, *inputs, adapted)
            eager_adapted = loop_logits(model, fast, None, *inputs, adapted)
            checks[f"{step} with an adapter vs the eager step with it"] = compare(
                f"{step} with an adapter", batched, "the eager step with it", eager_adapted, tolerance
            )
    except Exception as why:  # noqa: BLE001
        log.warning("%s: decoding one prediction at a time; the batched step failed its check: %s", label, reason(why))
        return _served(fast, f"the batched step failed its check: {reason(why)}", checks)
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


def batched_step(
    transformer: CachedTransformer, model, slots: int, masked: bool, capture: bool = False, adapter_rank: int = 0
) -> SlotStep:
    """The batched step for `slots` windows: the masked slots (CUDA; a graph when `capture`;
    holding adapters up to `adapter_rank`), or
    the per-slot rows with the first linear maps whose rows keep their numbers whatever the
    occupancy: oneDNN's packed products, else MKL's wide product (W @ x^T)^T, each over the
    occupied slots' rows; else the wide product over every slot's rows, a fixed shape."""
    if masked:
        return MaskedSlots(transformer, model, slots, capture=capture, adapter_rank=adapter_rank)
    step = PerSlotRows(transformer, model, slots)
    if packing_works(transformer.lm.transformer.layers[0].linear1.weight):
        try:
            binder = PackedBinder(ROWS_PER_SLOT * slots)
            step.use(binder, True, "per slot, oneDNN's packed products over the occupied slots' rows")
            if step.occupancy_leaves_rows_alone():
                return step
        except RuntimeError:  # a weight this build of oneDNN cannot pack
            pass
    step.use(bind_wide, True, "per slot, MKL's (W @ x^T)^T over the occupied slots' rows")  # (packed copies go)
    if not step.occupancy_leaves_rows_alone():
        step.use(bind_wide, False, "per slot, MKL's (W @ x^T)^T over every slot's rows")
    return step
