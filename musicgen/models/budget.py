"""The memory budget for resident models, and which models to evict to make room for another.

Policy (docs/memory.md): the versions setup() loads stay resident; any other is loaded
on its first request and kept while everything resident fits the budget; to load one that does
not fit, the least recently used models that setup() did not load are evicted first. A model
that cannot fit even with every evictable model gone is refused with a message naming it and
the memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from musicgen.errors import CapacityError
from musicgen.models.memory import GB, format_bytes

# Left free by the default budget for the largest generation: the 3.3 B model's 30 s attention
# cache (1.2 GB in float16, 2.4 GB in float32 on a CPU), a CUDA graph's static buffers, EnCodec's
# decode of 60 s of stereo, HT-Demucs on a 90 s melody and the allocator's slack. A policy, not a
# measurement: operators with measured figures set MUSICGEN_GPU_MEMORY_GB.
HEADROOM = {"cuda": 6 * GB, "cpu": 8 * GB}


@dataclass(frozen=True)
class MemoryBudget:
    """At most `limit` bytes resident on the device; `source` says where the number came from."""

    limit: int
    source: str

    def describe(self) -> str:
        return f"{format_bytes(self.limit)} ({self.source})"


def device_memory(device: str) -> int:
    """The device's memory in bytes: the GPU's total, or the machine's physical memory for a CPU."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def configured_budget(device: str, gigabytes: float | None = None) -> MemoryBudget:
    """`gigabytes` (the MUSICGEN_GPU_MEMORY_GB setting) if given, else the device's memory less
    the headroom the largest generation needs (HEADROOM)."""
    if gigabytes is not None:
        return MemoryBudget(int(gigabytes * GB), f"MUSICGEN_GPU_MEMORY_GB={gigabytes:g}")
    total = device_memory(device)
    headroom = HEADROOM["cuda" if device.startswith("cuda") else "cpu"]
    return MemoryBudget(
        max(total - headroom, 0), f"{device} memory {total / GB:.1f} GB less {headroom / GB:.0f} GB for generation"
    )


def evictions(need: int, resident: int, budget: MemoryBudget, evictable: Mapping[str, int], version: str) -> list[str]:
    """Which models to evict, least recently used first, so `need` more bytes fit beside the
    `resident` bytes; `evictable`: the models that may go, in least recently used order, with
    their sizes. Raises CapacityError when evicting all of them would not be enough."""
    chosen: list[str] = []
    free = budget.limit - resident
    for name, size in evictable.items():
        if need <= free:
            break
        chosen.append(name)
        free += size
    if need > free:
        kept = resident - sum(evictable.values())
        raise CapacityError(
            f"model_version={version!r} needs {format_bytes(need)} and cannot be loaded: the memory budget is "
            f"{budget.describe()}, and the models that stay resident (set up with MUSICGEN_MODEL_VERSIONS) and "
            f"the shared modules hold {format_bytes(kept)} of it. The operator can raise MUSICGEN_GPU_MEMORY_GB or preload fewer models."
        )
    return chosen
