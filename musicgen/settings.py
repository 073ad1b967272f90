"""Every setting an operator can give, declared once: the environment variables the service reads.

`read_settings()` reads and checks them all, once, when the service (predict.py's setup(), train.py's
train()) or the command line starts; the frozen `Settings` it returns is then passed down as
arguments. A bad value stops the start with one SettingsError naming the variable, the value and
what is allowed. This is the only serving module that reads os.environ (musicgen.weights.layout
writes the Hugging Face variables audiocraft's libraries read; musicgen.models.memory writes
oneDNN's). The README's settings table is `markdown_table()` (tests/test_settings.py keeps them equal).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from musicgen.errors import SettingsError
from musicgen.versions import GENERATING, PRELOADED

log = logging.getLogger(__name__)
REPOSITORY = Path(__file__).resolve().parent.parent  # the checkout (predict.py, cog.yaml, .cog/)
DEFAULT_ROOT = REPOSITORY / "weights"  # the weights root when MUSICGEN_WEIGHTS is not set
# The variables other modules write for a process they start, or hand to a library.
ROOT_ENV = "MUSICGEN_WEIGHTS"
FINE_TUNED_ENV = "COG_WEIGHTS"  # Cog's: what its runtime hands setup() as `weights`
SLOTS_ENV = "COG_MAX_CONCURRENCY"  # Cog's runtime's prediction slots
ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"  # read by oneDNN (torch's CPU kernels) once
METRICS_ENV = "MUSICGEN_METRICS_PORT"  # the worker's probes and metrics (musicgen.serving.probes)
TOKEN_LOOPS = ("musicgen", "audiocraft")  # our loop (musicgen.tokens), or audiocraft's own
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes"), ("0", "false", "no")
# Predictions of one model decoding together when MUSICGEN_MAX_BATCH is unset. On a GPU a step
# is bound by launch overhead and reading every weight once, whatever the batch. On a CPU one at a
# time: batching pays there too (docs/benchmarks.md), but a slot's cache is float32 and the batched
# step keeps a packed copy of the LM's linear weights (the small model at N = 4: 3.6 GB + 1.4 GB;
# large: 14.3 GB + 11.3 GB), and N = 1 keeps our loop's tokens exactly audiocraft's.
DEFAULT_MAX_BATCH = {"cuda": 4, "cpu": 1}


def _positive_number(text: str) -> float:
    value = float(text)  # ValueError for words
    if not value > 0 or math.isinf(value):
        raise ValueError
    return value


def _positive_integer(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError
    return int(text)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536 or ":" in host:
        raise ValueError
    return host or "0.0.0.0", int(port)


def _adapter_rank(text: str) -> int:
    if not text.isdigit() or int(text) > 128:
        raise ValueError
    return int(text)


def _switch(text: str) -> bool:
    if text.lower() not in TRUE_WORDS + FALSE_WORDS:
        raise ValueError
    return text.lower() in TRUE_WORDS


def _versions(text: str) -> tuple[str, ...]:
    versions = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not versions or any(name not in GENERATING for name in versions):
        raise ValueError
    return versions


def _token_loop(text: str) -> str:
    if text not in TOKEN_LOOPS:
        raise ValueError
    return text


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise ValueError
    return text.rstrip("/")


def _device(text: str) -> str:
    if text != "cpu" and not (text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit())):
        raise ValueError
    return text


@dataclass(frozen=True)
class Setting:
    """One environment variable: its field in Settings, how its text is read, and the README's words."""

    variable: str
    field: str  # the Settings field it fills
    parse: Callable[[str], object]  # text -> value; ValueError when the text is not allowed
    default: str  # the README's words for the value when unset
    allowed: str  # what the README and the error message say is allowed
    meaning: str  # one line
    old_names: tuple[str, ...] = ()  # earlier names of the variable, still read (with a deprecation line)


SETTINGS = (
    Setting(ROOT_ENV, "weights_root", lambda text: Path(text).expanduser().resolve(), "`weights/` in the checkout",
            "a folder", "The weights root: every checkpoint, the Hugging Face and torch caches (weights/README.md)."),
    Setting(FINE_TUNED_ENV, "fine_tuned", str, "unset", "a checkpoint file, a folder holding `state_dict.bin`, or an http(s) URL",
            "A fine-tuned LM served in place of its base model (Cog passes it to setup(); the command line's default `--weights`)."),
    Setting("MUSICGEN_MODEL_VERSIONS", "model_versions", _versions, "`" + ",".join(PRELOADED) + "`",
            "a comma-separated subset of " + ", ".join(f"`{name}`" for name in GENERATING),
            "The model versions setup() loads and keeps; every other one whose weights are present loads on first request."),
    Setting("MUSICGEN_DEVICE", "device", _device, "`cuda` when present, else `cpu`", "`cpu`, `cuda`, `cuda:N`",
            "The device the models run on (on CUDA the LM's transformer is float16)."),
    Setting("MUSICGEN_TOKEN_LOOP", "token_loop", _token_loop, "`musicgen`", ", ".join(f"`{name}`" for name in TOKEN_LOOPS),
            "The token loop: ours (faster, token-exact on CPU) or audiocraft's own. Its old name, `MUSICGEN_DECODER`, is still read.",
            old_names=("MUSICGEN_DECODER",)),
    Setting("MUSICGEN_GPU_MEMORY_GB", "memory_budget_gb", _positive_number, "the device's memory less 6 GB (CUDA) or 8 GB (CPU)",
            "a positive number of GB (10^9 bytes)", "The budget for resident models; the least recently used on-demand model is evicted to fit another."),
    Setting("MUSICGEN_DOWNLOAD_ON_SETUP", "download_on_setup", _switch, "`0`", "`1`/`true`/`yes` or `0`/`false`/`no`",
            "Whether setup() may download missing weights (else it fails at once, naming them)."),
    Setting("MUSICGEN_INPUT_TIMEOUT", "input_timeout", _positive_number, "`120`", "a positive number of seconds",
            "The whole download of one `input_audio` URL."),
    Setting("MUSICGEN_INPUT_MAX_MB", "input_max_mb", _positive_number, "`400`", "a positive number of MB (10^6 bytes)",
            "The largest `input_audio` a URL may deliver."),
    Setting("MUSICGEN_DATASET_MAX_MB", "dataset_max_mb", _positive_number, "`2000`", "a positive number of MB (10^6 bytes)",
            "The largest training `dataset_path` a URL may deliver (within `MUSICGEN_INPUT_TIMEOUT`)."),
    Setting("MUSICGEN_MAX_BATCH", "max_batch", _positive_integer, "`4` on CUDA, `1` on a CPU", "a positive integer",
            "Predictions of one model that decode together, each step shared (docs/batching.md)."),
    Setting("MUSICGEN_STALL_SECONDS", "stall_seconds", _positive_number, "`300`", "a positive number of seconds",
            "With `MUSICGEN_MAX_BATCH` > 1: a prediction waiting while batched decoding makes no progress this long fails, and the stall is logged (docs/batching.md)."),
    Setting(SLOTS_ENV, "runtime_slots", _positive_integer, "`1` (`serve`: twice `MUSICGEN_MAX_BATCH`, at least `2`)",
            "a positive integer", "Cog's runtime slots: requests beyond the batch wait for a place instead of a 409 (docs/operations.md)."),
    Setting("MUSICGEN_LORA_MAX_MB", "lora_max_mb", _positive_number, "`512`", "a positive number of MB (10^6 bytes)",
            "The largest `lora_weights` adapter a URL may deliver (within `MUSICGEN_INPUT_TIMEOUT`)."),
    Setting("MUSICGEN_LORA_CACHE_MB", "lora_cache_mb", _positive_number, "`1024`", "a positive number of MB (10^6 bytes)",
            "Adapters kept ready on the device by content, the least recently used dropped first; counted by the memory budget (docs/lora.md)."),
    Setting("MUSICGEN_LORA_SLOT_RANK", "lora_slot_rank", _adapter_rank, "`16`", "a whole number from 0 to 128",
            "With batching on CUDA: the highest adapter rank the captured step's slots hold; a window with a higher rank decodes on its own (0: none)."),
    Setting("MUSICGEN_TRAIN_MEMORY_GB", "train_memory_gb", _positive_number, "the GPU's memory, or the CPU memory available when training starts",
            "a positive number of GB (10^9 bytes)", "The memory a fine-tune plans with; one that needs more is refused before the model loads."),
    Setting(METRICS_ENV, "metrics_address", _address, "unset: off (`serve` opens one on 127.0.0.1 for its drain)",
            "a port (all interfaces) or `host:port`",
            "The worker's port for `/livez`, `/readyz` and Prometheus' `/metrics` (docs/operations.md)."),
    Setting("MUSICGEN_DRAIN_SECONDS", "drain_seconds", _positive_number, "`25`", "a positive number of seconds",
            "On SIGTERM (`serve`): how long running predictions may take to finish; the rest end as failed, saying the server is shutting down."),
    Setting(ONEDNN_CACHE_ENV, "onednn_cache_entries", _positive_integer, "`64`", "a positive integer",
            "oneDNN's compiled-kernel cache on CPU (its own default, 1024, grows the worker's memory)."),
    Setting("HF_ENDPOINT", "hub_endpoint", _url, "`https://huggingface.co`", "an http(s) URL",
            "The Hugging Face hub `download` fetches from (a mirror)."),
    Setting("HF_TOKEN", "hub_token", str, "unset", "a Hugging Face token", "Sent by `download` to the hub."),
)  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """The operator's settings, checked (SETTINGS says what each one is)."""

    weights_root: Path = DEFAULT_ROOT
    fine_tuned: str | None = None
    model_versions: tuple[str, ...] = PRELOADED
    device: str | None = None  # None: CUDA when present, else the CPU
    token_loop: str = TOKEN_LOOPS[0]
    memory_budget_gb: float | None = None  # None: the device's memory less the headroom (musicgen.models.budget)
    download_on_setup: bool = False
    input_timeout: float = 120.0  # seconds: 350 MB at 25 Mbit/s
    # 20 minutes (the longest input decoded) of 24-bit 48 kHz stereo WAV is 346 MB; every compressed
    # format of that length is far smaller.
    input_max_mb: float = 400.0
    dataset_max_mb: float = 2000.0  # a training's archive: hours of compressed audio
    max_batch: int | None = None  # None: the device's DEFAULT_MAX_BATCH
    # longer than any legitimate pause of the batched path: loading the largest model on first use
    stall_seconds: float = 300.0
    runtime_slots: int = 1  # Cog's own default
    lora_max_mb: float = 512.0  # rank 128 on the 3.3 B LMs, float16: 400 MB
    lora_cache_mb: float = 1024.0
    lora_slot_rank: int = 16  # per slot on large: 50 MB of float16 buffers
    train_memory_gb: float | None = None  # None: the device's (musicgen.train.memory)
    metrics_address: tuple[str, int] | None = None  # (host, port) of the probes and metrics; None: off
    drain_seconds: float = 25.0  # Kubernetes' default grace period (30 s) less a margin for the exit
    # oneDNN's primitive cache on CPU (a convolution compiled for each input shape, with its
    # buffers): EnCodec, the resampler and MultiBand Diffusion meet a new length with almost every
    # request, and oneDNN keeps the last 1024 by default: 100 MB more RSS after a soak of 200 mixed
    # predictions (docs/benchmarks.md). 64 hold what one prediction reuses (30 s windows, diffusion
    # steps): no measurable change in speed.
    onednn_cache_entries: int = 64
    hub_endpoint: str = "https://huggingface.co"
    hub_token: str | None = None

    def max_batch_on(self, device: str) -> int:
        """MUSICGEN_MAX_BATCH if set, else `device`'s default (DEFAULT_MAX_BATCH)."""
        return self.max_batch or DEFAULT_MAX_BATCH["cuda" if device.startswith("cuda") else "cpu"]

    def replace(self, **changes) -> Settings:
        """These settings with `changes` (field=value): for callers that choose, such as the bench and tests."""
        return dataclasses.replace(self, **changes)


def best_device(setting: str | None = None) -> str:
    """`setting` (MUSICGEN_DEVICE) if given; else CUDA when present (the LM then runs in float16),
    else CPU. torch is imported only to look (this module stays light to import)."""
    if setting:
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def read_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Every setting from `environ` (default: the process's environment), checked.

    An unset or empty variable takes its default. Raises SettingsError naming the first bad one.
    """
    environ = os.environ if environ is None else environ
    values = {}
    for setting in SETTINGS:
        variable = setting.variable
        text = environ.get(variable, "").strip()
        for old in setting.old_names:
            if not text and environ.get(old, "").strip():
                variable, text = old, environ[old].strip()
                log.warning("%s is deprecated: set %s instead (it takes the same values)", old, setting.variable)
        if not text:
            continue
        try:
            values[setting.field] = setting.parse(text)
        except ValueError:
            raise SettingsError(
                f"{variable}={text!r} is not allowed: use {setting.allowed}, or leave it unset "
                f"for the default ({setting.default.replace('`', '')})."
            ) from None
    return Settings(**values)


def child_environment(changes: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of this process's environment with `changes`: for a process this one starts (the server)."""
    return {**os.environ, **(changes or {})}


def markdown_table() -> str:
    """The README's settings table."""
    rows = ["| variable | default | allowed | meaning |", "|---|---|---|---|"]
    rows += [f"| `{s.variable}` | {s.default} | {s.allowed} | {s.meaning} |" for s in SETTINGS]
    return "\n".join(rows)
