"""Cold start: hooks around audiocraft's loaders, installed only while setup() loads.

Every checkpoint is memory-mapped instead of read into a CPU copy first, the random initialisation
of modules whose weights the checkpoint overwrites is skipped, and T5 is loaded once for both LMs.
The result is the very model `MusicGen.get_pretrained` returns (same weights, buffers, dtypes,
devices; tests/test_models.py checks it).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import demucs.pretrained
import torch
from audiocraft.models import loaders
from audiocraft.modules import conditioners

from musicgen.models.checkpoints import read_checkpoint, read_lm_checkpoint
from musicgen.weights.layout import CODEC_FILE, LM_FILE

# torch.nn.init functions that fill a tensor with random numbers: skipped while building a module
# whose every parameter the checkpoint then overwrites (load_state_dict is strict).
RANDOM_INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "xavier_uniform_",
    "xavier_normal_",
    "orthogonal_",
)


_thread = threading.local()  # .skip_init: this thread is building modules a checkpoint overwrites


@contextlib.contextmanager
def fast_loading(shared: SharedModules | None = None) -> Iterator[None]:
    """While loading: memory-map checkpoints, allow skipping random init, share T5.

    - audiocraft's `load_lm_model_ckpt` / `load_compression_model_ckpt` read the file with
      `torch.load(mmap=True)`: tensors are read from the page cache straight into the model's
      parameters (on the model's device, in its dtype) instead of into a full CPU copy first.
    - torch.nn.init's random fills become no-ops in threads inside skipping_random_init();
      elsewhere (other threads, T5's own loading) they run as usual.
    - `T5EncoderModel.from_pretrained` / `T5Tokenizer.from_pretrained`, as audiocraft's
      conditioners module calls them, and demucs' `pretrained.get_model` (the chroma conditioner's
      HT-Demucs), load each name once and hand every conditioner the same object (conditioners
      keep it outside their state dict, so nothing writes into it). `shared` holds what was
      loaded, so a model loaded later (on its first request) gets the same objects too.

    Everything is restored on exit. Not reentrant across threads: call it from one thread.
    """
    shared = shared or SharedModules()
    with contextlib.ExitStack() as stack:
        for name, filename, read in (
            ("load_lm_model_ckpt", LM_FILE, read_lm_checkpoint),  # exports and community fine-tunes
            ("load_compression_model_ckpt", CODEC_FILE, read_checkpoint),
        ):
            stack.enter_context(_patched(loaders, name, _local_checkpoint(getattr(loaders, name), filename, read)))
        for name in RANDOM_INIT_FUNCTIONS:
            stack.enter_context(_patched(torch.nn.init, name, _skippable(getattr(torch.nn.init, name))))
        stack.enter_context(_patched(conditioners, "T5EncoderModel", shared.t5_encoder))
        stack.enter_context(_patched(conditioners, "T5Tokenizer", shared.t5_tokenizer))
        stack.enter_context(_patched(demucs.pretrained, "get_model", shared.demucs.from_pretrained))
        yield


@contextlib.contextmanager
def _patched(owner: object, name: str, value: object) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _local_checkpoint(original: Callable, filename: str, read: Callable[[Path], dict]) -> Callable:
    """audiocraft's `load_*_ckpt(file_or_url_or_id, cache_dir)` with local files memory-mapped
    (`read`, musicgen.models.checkpoints); anything else (a hub id, a URL) still goes to audiocraft's
    own function."""

    def load_ckpt(file_or_url_or_id: Path | str, cache_dir: str | None = None) -> dict:
        path = Path(file_or_url_or_id)
        if path.is_dir():
            path = path / filename
        if path.is_file():
            return read(path)
        return original(file_or_url_or_id, cache_dir=cache_dir)

    return load_ckpt


def _skippable(init: Callable) -> Callable:
    @functools.wraps(init)
    def maybe_init(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if getattr(_thread, "skip_init", False):
            return tensor
        return init(tensor, *args, **kwargs)

    return maybe_init


@contextlib.contextmanager
def _random_init(skip: bool) -> Iterator[None]:
    previous = getattr(_thread, "skip_init", False)
    _thread.skip_init = skip
    try:
        yield
    finally:
        _thread.skip_init = previous


def skipping_random_init():
    """In this thread, modules are built with uninitialised weights. Only around loaders whose
    strict load_state_dict then overwrites every parameter and buffer: audiocraft's LM and EnCodec
    loaders, and demucs' load_model that the melody conditioner calls (T5 goes through LoadOnce,
    which initialises as usual). tests/test_models.py compares every tensor with get_pretrained."""
    return _random_init(skip=True)


class LoadOnce:
    """Stands in for a transformers class (or a loading function) while loading: `from_pretrained`
    loads each name once (with normal initialisation) and returns the same object to every caller,
    in any thread. `overwrites_init`: the loader overwrites every weight it initialises (demucs'
    load_model), so the caller's skipping_random_init() may stay in force."""

    def __init__(self, load: type | Callable, overwrites_init: bool = False):
        self.load = getattr(load, "from_pretrained", load)
        self.overwrites_init = overwrites_init
        self.loaded: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def from_pretrained(self, name: str, *args, **kwargs):
        key = (name, args, tuple(sorted(kwargs.items())))
        with self._lock:
            if key not in self.loaded:
                with contextlib.nullcontext() if self.overwrites_init else _random_init(skip=False):
                    self.loaded[key] = self.load(name, *args, **kwargs)
            return self.loaded[key]


class SharedModules:
    """The conditioners' companions loaded so far (T5 encoder and tokenizer, HT-Demucs), one per
    name, for every model loaded in this process (musicgen.models.load keeps one)."""

    def __init__(self):
        self.t5_encoder = LoadOnce(conditioners.T5EncoderModel)
        self.t5_tokenizer = LoadOnce(conditioners.T5Tokenizer)
        self.demucs = LoadOnce(demucs.pretrained.get_model, overwrites_init=True)
