"""What a fine-tune needs in memory, known before its model loads; one that cannot fit is refused.

The need, from the base checkpoint's tensor shapes (read without loading them) and the inputs:
- weights: the LM's, float32 (a CPU computes in float32; full fine-tuning keeps float32 weights to
  update); with LoRA on a GPU the frozen transformer stays float16, as stored;
- what trains, in float32: its gradients and AdamW's two moments, 12 bytes per trained parameter
  (all of the LM's, or only the adapters'); full fine-tuning on a GPU also keeps autocast's
  half-precision copies of the weights (2 bytes per parameter);
- activations for the batch: `batch_size` x TOKENS_PER_ITEM (a 30 s segment and its conditions) x
  layers x dim x ACTIVATION_BYTES per token, layer and width; with activation checkpointing, only
  each layer's input (4 bytes per value) and one layer's whole activations. With LoRA, each
  layer's adapted weights (W + B A, made by the parametrization and kept for the backward pass):
  every layer's, or with checkpointing one layer's at a time;
- loading: the checkpoint's float16 tensors are read (memory-mapped) while the float32 LM is built;
- the rest: T5, EnCodec, HT-Demucs and their working memory (OTHER_BYTES).
Activation checkpointing turns on when the activations would not fit without it. The memory there is:
the GPU's free memory, or the CPU memory the kernel reports available (MemAvailable), or the
MUSICGEN_TRAIN_MEMORY_GB setting. The figures are measured (docs/benchmarks.md, "LoRA").
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import omegaconf
import torch

from musicgen.errors import InputError
from musicgen.lora.adapter import Geometry
from musicgen.lora.training import trainable_parameters
from musicgen.models.checkpoints import read_lm_checkpoint
from musicgen.models.memory import GB
from musicgen.tokens.adapters import TARGETS
from musicgen.train.options import TrainRequest

log = logging.getLogger(__name__)

TOKENS_PER_ITEM = 1800  # a 30 s segment's 1500 frames and its conditions (T5's tokens, a melody's chroma)
# Bytes of activations per token, layer and model width autograd keeps for the backward pass:
# measured on audiocraft's LM (GPU, half-precision autocast: 38 with prepended conditions, 50 with
# cross attention; CPU float32: 84 on the small bench checkpoint, docs/benchmarks.md "LoRA").
ACTIVATION_BYTES = {"cuda": 50, "cpu": 90}
OPTIMIZER_BYTES = 12  # per trained parameter: its float32 gradient and AdamW's two moments
HALF_COPY_BYTES = 2  # per LM parameter, full fine-tuning under autocast on a GPU
OTHER_BYTES = {"cuda": 2 * GB, "cpu": 3 * GB}  # T5, EnCodec, HT-Demucs, the allocator's slack (measured)
GPU_HEADROOM = 0.95  # of the GPU's free memory a fine-tune plans to use
SUGGESTED_RANK = 16


@dataclass(frozen=True)
class MemoryPlan:
    """One training's memory need, in bytes, and where it can run."""

    weights: int
    optimizer: int  # gradients and AdamW's moments of what trains
    activations: int
    loading: int  # the checkpoint's tensors, read while the LM is built
    other: int
    checkpointing: bool  # activation checkpointing, to make the activations fit
    available: int
    source: str  # where `available` came from

    @property
    def need(self) -> int:
        """The peak: loading (weights + the checkpoint read), or training, whichever is higher."""
        return self.other + max(self.weights + self.loading, self.weights + self.optimizer + self.activations)

    def describe(self) -> str:
        return (
            f"about {self.need / GB:.1f} GB (weights {self.weights / GB:.1f}, gradients and AdamW "
            f"{self.optimizer / GB:.1f}, activations {self.activations / GB:.1f}"
            f"{' with activation checkpointing' if self.checkpointing else ''}, the rest {self.other / GB:.1f})"
        )


def available_memory(device: str, setting_gb: float | None) -> tuple[int, str]:
    """The memory a fine-tune on `device` may plan with, and where the figure comes from."""
    if setting_gb is not None:
        return int(setting_gb * GB), f"MUSICGEN_TRAIN_MEMORY_GB={setting_gb:g}"
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free * GPU_HEADROOM), f"{GPU_HEADROOM:.0%} of the GPU's free memory"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024, "the CPU memory available now"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"), "the CPU's free memory"


def estimate(base: Path, request: TrainRequest, device: str, available: int, source: str = "") -> MemoryPlan:
    """What `request`'s fine-tune of the LM checkpoint `base` needs on `device` with `available`
    bytes (activation checkpointing on when the activations would not fit without it)."""
    state, geometry = _shapes(base)
    return _plan(state, geometry, request.lora_rank, request.batch_size, device, available, source)


def plan_memory(base: Path, request: TrainRequest, device: str, setting_gb: float | None = None) -> MemoryPlan:
    """The plan of `request`'s fine-tune of the LM checkpoint `base` on `device`; InputError naming
    the need, the memory there is and what to change when it cannot fit, before anything loads."""
    state, geometry = _shapes(base)
    available, source = available_memory(device, setting_gb)
    plan = _plan(state, geometry, request.lora_rank, request.batch_size, device, available, source)
    if plan.need <= available:
        log.info("memory plan: %s of %.1f GB (%s)", plan.describe(), available / GB, source)
        return plan
    raise InputError(
        f"fine-tuning {request.model_version} with lora_rank={request.lora_rank} and batch_size={request.batch_size} "
        f"on {device} needs {plan.describe()}; {source} is {available / GB:.1f} GB. "
        + _what_to_change(state, geometry, request, device, available, source)
    )


def _shapes(base: Path) -> tuple[dict, Geometry]:
    package = read_lm_checkpoint(base)  # memory-mapped: the shapes, not the values
    return package["best_state"], Geometry.of_config(omegaconf.OmegaConf.create(package["xp.cfg"]))


def _plan(state: dict, geometry: Geometry, rank: int, batch: int, device: str, available: int, source: str):
    kind = "cuda" if device.startswith("cuda") else "cpu"
    parameters = sum(tensor.numel() for tensor in state.values() if tensor.is_floating_point())
    transformer = sum(
        t.numel() for name, t in state.items() if name.startswith("transformer.") and t.is_floating_point()
    )
    adapted_per_layer = 0  # LoRA: one layer's adapted weights, in the frozen weights' dtype
    if rank:
        trained = trainable_parameters(rank, geometry.layers, [geometry.shapes(target) for target in TARGETS])
        frozen_bytes = 2 if kind == "cuda" else 4  # the frozen transformer stays float16 on a GPU
        weights = 4 * parameters - (4 - frozen_bytes) * transformer + 4 * trained
        optimizer = OPTIMIZER_BYTES * trained
        adapted_per_layer = frozen_bytes * sum(out * inner for out, inner in map(geometry.shapes, TARGETS))
    else:
        weights = 4 * parameters
        optimizer = OPTIMIZER_BYTES * parameters + (HALF_COPY_BYTES * parameters if kind == "cuda" else 0)
    values = batch * TOKENS_PER_ITEM * geometry.dim
    whole = geometry.layers * (values * ACTIVATION_BYTES[kind] + adapted_per_layer)
    checkpointed = 4 * values * geometry.layers + values * ACTIVATION_BYTES[kind] + adapted_per_layer
    loading = 2 * parameters  # float16 as stored
    other = OTHER_BYTES[kind]
    checkpointing = other + weights + optimizer + whole > available
    activations = checkpointed if checkpointing else whole
    return MemoryPlan(weights, optimizer, activations, loading, other, checkpointing, available, source)


def _what_to_change(state: dict, geometry: Geometry, request: TrainRequest, device: str, available: int, source: str):
    """A change of lora_rank or batch_size that fits, named with its need; or why none does."""
    tries = []
    if not request.lora:
        tries.append((f"lora_rank={SUGGESTED_RANK} (low-rank adapters)", SUGGESTED_RANK, request.batch_size))
    if request.batch_size > 1:
        tries.append(("batch_size=1", request.lora_rank, 1))
    if not request.lora:
        tries.append((f"lora_rank={SUGGESTED_RANK} and batch_size=1", SUGGESTED_RANK, 1))
    elif request.lora_rank > 1:
        tries.append(("lora_rank=1 and batch_size=1", 1, 1))
    for words, rank, batch in tries:
        plan = _plan(state, geometry, rank, batch, device, available, source)
        if plan.need <= available:
            return f"Set {words}: it needs about {plan.need / GB:.1f} GB."
    return "No lora_rank or batch_size fits it: use a device with more memory, or a smaller model_version."
