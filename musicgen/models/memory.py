"""What is resident: bytes per loaded component and for the process (for the setup log and the bench),
and what keeps it from growing while serving: bounded pattern and oneDNN caches, freed pages handed back."""

from __future__ import annotations

import collections
import ctypes
import functools
import itertools
import os
from collections.abc import Mapping

import torch
from audiocraft.models.encodec import InterleaveStereoCompressionModel

from musicgen.settings import ONEDNN_CACHE_ENV

GB = 1e9
MB = 1e6
# Codebook patterns each LM keeps (audiocraft keeps 100: one per sequence length asked for, each
# with its layout and index tensors; a server that sees every duration and continuation window
# holds hundreds of megabytes of them). Rebuilding one takes milliseconds.
PATTERN_CACHE_ENTRIES = 4


def resident_components(models: Mapping, mbd=None, codecs=()) -> dict[str, list[torch.nn.Module]]:
    """Every loaded module of `models` (model_version -> MusicGen), `mbd` (MultiBand
    Diffusion, once loaded) and `codecs` (EnCodecs loaded on their own) by component:
    `lm:<version>`, `codec`, `t5`, `demucs`, `mbd`. A module shared by several models appears once
    (T5, EnCodec: a stereo model's interleaving wrapper counts as the mono codec it wraps); distinct
    copies get the version in their name (`codec:stereo-large`)."""
    found: dict[str, list[tuple[str, torch.nn.Module]]] = collections.defaultdict(list)
    for version, model in models.items():
        found[f"lm:{version}"].append((version, model.lm))
        found["codec"].append((version, mono_codec(model.compression_model)))
        for conditioner in model.lm.condition_provider.conditioners.values():
            for name in ("t5", "demucs"):  # kept in __dict__, outside the LM's modules
                module = conditioner.__dict__.get(name)
                if isinstance(module, torch.nn.Module):
                    found[name].append((version, module))
    for codec in codecs:
        found["codec"].append(("shared", codec))
    if mbd is not None:
        for process in mbd.DPs:
            found["mbd"].append(("mbd", process.model))
            found["mbd"].append(("mbd", process.schedule.sample_processor))
    components: dict[str, list[torch.nn.Module]] = {}
    for name, owners in found.items():
        distinct = list({id(module): (owner, module) for owner, module in reversed(owners)}.values())[::-1]
        if len(distinct) == 1 or name == "mbd" or name.startswith("lm:"):
            components[name] = [module for _, module in distinct]
        else:
            for owner, module in distinct:
                components[f"{name}:{owner}"] = [module]
    return components


def mono_codec(codec: torch.nn.Module) -> torch.nn.Module:
    """The mono EnCodec inside a stereo model's interleaving wrapper (or the codec itself)."""
    return codec.model if isinstance(codec, InterleaveStereoCompressionModel) else codec


def memory_report(models: Mapping, mbd=None, device: str = "cpu", codecs=()) -> dict[str, int]:
    """Bytes resident per component (parameters and buffers; a storage shared by several
    components is counted once, under the first), then the process as a whole: `process_rss`
    (VmRSS) and, on CUDA, `cuda_allocated`."""
    report: dict[str, int] = {}
    seen: set[tuple[str, int]] = set()
    for name, modules in resident_components(models, mbd, codecs).items():
        total = 0
        for module in modules:
            for tensor in itertools.chain(module.parameters(), module.buffers()):
                storage = tensor.untyped_storage()
                key = (str(storage.device), storage.data_ptr())
                if storage.nbytes() and key not in seen:
                    seen.add(key)
                    total += storage.nbytes()
        report[name] = total
    report["process_rss"] = process_rss()
    if device.startswith("cuda"):
        report["cuda_allocated"] = torch.cuda.memory_allocated()
    return report


def format_bytes(size: float) -> str:
    """`5.54 GB`, `236.0 MB`, `12.3 kB` or `512 bytes`: a unit that shows the number (10^3 steps)."""
    for unit, scale in (("GB", GB), ("MB", MB), ("kB", 1e3)):
        if abs(size) >= scale:
            return f"{size / scale:.2f} GB" if unit == "GB" else f"{size / scale:.1f} {unit}"
    return f"{size:.0f} bytes"


def format_memory(report: dict[str, int]) -> str:
    """`lm:melody 5.54 GB, codec 236.0 MB, ...` for the log."""
    return ", ".join(f"{name} {format_bytes(size)}" for name, size in report.items())


def bound_pattern_cache(lm: torch.nn.Module, entries: int = PATTERN_CACHE_ENTRIES) -> None:
    """Make `lm`'s codebook-pattern provider keep only its last `entries` patterns."""
    provider = lm.pattern_provider
    build = type(provider).get_pattern.__get__(provider)  # the provider's own, uncached
    provider.get_pattern = functools.lru_cache(entries)(build)


def bound_onednn_cache(entries: int) -> None:
    """Keep oneDNN's primitive cache to `entries` (the ONEDNN_PRIMITIVE_CACHE_CAPACITY setting).

    oneDNN reads the variable once, when it builds its first primitive: call this before any model runs.
    """
    os.environ[ONEDNN_CACHE_ENV] = str(entries)


def release_freed_memory() -> None:
    """Hand the C allocator's free pages back to the system (glibc's malloc_trim; elsewhere a no-op).

    Loading frees gigabytes of temporary buffers, many in the loader threads' own malloc arenas,
    which glibc keeps for reuse: about 0.6 GB of RSS after loading the 1.5 B melody LM on CPU. A
    prediction frees hundreds of megabytes of tensors of its own sizes (its duration, its input's
    length), which glibc keeps fragmented across predictions; handing them back after each one
    keeps the worker's RSS flat (a few milliseconds).
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def process_rss() -> int:
    """This process's resident memory in bytes (VmRSS in /proc/self/status; 0 where there is none)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
