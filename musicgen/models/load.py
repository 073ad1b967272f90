"""Load each model once, on the best device and dtype, and say what is resident.

The memory plan (README.md, "Memory plan", has the sizes):

- setup() loads the melody and large LMs with audiocraft's own loader: on CUDA their transformer
  layers are float16 (what `load_lm_model` asks for on a GPU), on CPU everything is float32.
- One 32 kHz EnCodec, loaded once: the melody and large checkpoints ship byte-identical copies.
  It serves both LMs, encode-decode and MultiBand Diffusion.
- One T5-base encoder (and tokenizer), loaded once and handed to both LMs' text conditioners;
  HT-Demucs is loaded once, by the melody LM's chroma conditioner (the large LM has none).
- MultiBand Diffusion is loaded on first use, over the same EnCodec, and then kept.
- A fine-tuned LM checkpoint replaces the base model it matches; that base is never loaded.

Cold start: every checkpoint is memory-mapped instead of read into a CPU copy first, the random
initialisation of modules whose weights the checkpoint overwrites is skipped, and the two LMs load
in parallel threads. The result is the very model `MusicGen.get_pretrained` returns (same
weights, buffers, dtypes, devices; tests/test_models.py checks it).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import filecmp
import functools
import itertools
import logging
import os
import pickle
import threading
import time
import typing
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import omegaconf
import torch

# isort: off
from musicgen import offline  # noqa: F401  (configures the hub cache before audiocraft loads)
from audiocraft.models import MultiBandDiffusion, MusicGen, loaders
from audiocraft.models.loaders import load_diffusion_models
from audiocraft.models.multibanddiffusion import DiffusionProcess
from audiocraft.modules import conditioners
from audiocraft.modules.diffusion_schedule import NoiseSchedule

# isort: on
from musicgen import weights
from musicgen.errors import InputError, WeightsError

log = logging.getLogger(__name__)

VERSIONS_ENV = "MUSICGEN_MODEL_VERSIONS"  # the operator's choice of what setup() loads
DEVICE_ENV = "MUSICGEN_DEVICE"  # "cpu" or "cuda[:N]", to override the automatic choice
GENERATING_VERSIONS = ("melody", "large")  # loaded at setup; encode-decode reuses their codec
# The released MultiBand Diffusion file pickles its OmegaConf configs. torch's safe loader
# (weights_only=True) refuses any class not named here; safety is never switched off.
MBD_SAFE_GLOBALS = [
    omegaconf.DictConfig,
    omegaconf.ListConfig,
    omegaconf.base.ContainerMetadata,
    omegaconf.base.Metadata,
    omegaconf.nodes.AnyNode,
    omegaconf.nodes.StringNode,
    omegaconf.nodes.IntegerNode,
    omegaconf.nodes.FloatNode,
    omegaconf.nodes.BooleanNode,
    typing.Any,
    collections.defaultdict,
    dict,
    list,
    int,
]
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
GB = 1e9
MB = 1e6


def best_device() -> str:
    """$MUSICGEN_DEVICE if set; else CUDA when present (the LM then runs in float16), else CPU."""
    return os.environ.get(DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "cpu")


def configured_versions() -> tuple[str, ...]:
    """The model versions setup() loads: $MUSICGEN_MODEL_VERSIONS (e.g. "melody"), else both."""
    text = os.environ.get(VERSIONS_ENV, "")
    versions = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in versions if name not in GENERATING_VERSIONS]
    if unknown:
        raise WeightsError(
            f"{VERSIONS_ENV}={text!r} names {', '.join(unknown)}; use a comma-separated subset of "
            f"{', '.join(GENERATING_VERSIONS)} (encode-decode uses whichever model's codec is loaded)."
        )
    return versions or GENERATING_VERSIONS


@dataclass
class LoadedModels:
    """Everything resident for serving: one MusicGen per model_version, on one device."""

    device: str
    generators: dict[str, MusicGen] = field(default_factory=dict)
    checkpoints: dict[str, Path] = field(default_factory=dict)  # the LM file each version serves
    _mbd: MultiBandDiffusion | None = None
    _mbd_lock: threading.Lock = field(default_factory=threading.Lock)

    def generator(self, version: str) -> MusicGen:
        if version not in self.generators:
            raise InputError(
                f"model_version={version!r} is not loaded by this deployment; it serves "
                f"{', '.join(self.generators)} (the operator chooses with {VERSIONS_ENV})."
            )
        return self.generators[version]

    @property
    def codec(self):
        """The 32 kHz EnCodec shared by every MusicGen model; serves encode-decode and MBD."""
        return next(iter(self.generators.values())).compression_model

    @property
    def mbd(self) -> MultiBandDiffusion:
        """MultiBand Diffusion, loaded on first use and then kept."""
        with self._mbd_lock:
            if self._mbd is None:
                self._mbd = load_mbd(self.codec, self.device)
                release_freed_memory()
                log.info("memory with MultiBand Diffusion: %s", format_memory(memory_report(self)))
        return self._mbd


def load_models(
    versions: tuple[str, ...] = GENERATING_VERSIONS,
    device: str | None = None,
    fine_tuned: str | Path | None = None,
    root: Path | None = None,
) -> LoadedModels:
    """Load `versions` once each, sharing EnCodec, T5 and HT-Demucs, and log what is resident.

    The weights are checked first (a fast, clear error, or a download when the operator allows it).
    `fine_tuned`: a fine-tuned LM checkpoint (path or URL) served in place of the base model whose
    architecture it has (see check_fine_tuned).
    """
    root = Path(root) if root else weights.weights_root()
    weights.ensure_weights(list(versions), root)
    models = LoadedModels(device=device or best_device())
    models.checkpoints = {version: weights.model_dir(version, root) / weights.LM_FILE for version in versions}
    start = time.perf_counter()
    with fast_loading():
        codecs = load_codecs(versions, models.device, root)
        if fine_tuned is not None:
            path = weights.fine_tuned_checkpoint(fine_tuned, root)
            version = check_fine_tuned(path, codecs)
            if version not in versions:
                raise WeightsError(f"the fine-tuned checkpoint {path} replaces {version}, which is not being loaded")
            log.info("serving the fine-tuned checkpoint %s as %s (the base %s is not loaded)", path, version, version)
            models.checkpoints[version] = path
        lms = _in_parallel(functools.partial(load_lm, device=models.device), models.checkpoints)
    release_freed_memory()
    for version, path in models.checkpoints.items():
        name = str(path.parent if path.name == weights.LM_FILE else path)  # get_pretrained's name: the folder
        models.generators[version] = assemble(name, codecs[version], lms[version])
    log.info("loaded %s on %s in %.1f s", ", ".join(versions), models.device, time.perf_counter() - start)
    log.info("memory after setup: %s", format_memory(memory_report(models)))
    return models


def load_lm(path: Path, device: str) -> torch.nn.Module:
    """audiocraft's `load_lm_model` on one checkpoint file (call it inside fast_loading())."""
    start = time.perf_counter()
    with _skipping_random_init():
        try:
            lm = loaders.load_lm_model(str(path), device=device)
        except RuntimeError as error:
            if not str(error).startswith("Error(s) in loading state_dict"):
                raise
            raise WeightsError(f"{path} does not fit the model its own config describes: {error}") from None
    log.info("loaded the LM %s in %.1f s", path, time.perf_counter() - start)
    return lm


def load_codecs(versions: tuple[str, ...], device: str, root: Path) -> dict[str, torch.nn.Module]:
    """Each version's EnCodec, loaded once per distinct file (the released ones are all the same)."""
    codecs: dict[str, torch.nn.Module] = {}
    loaded: dict[Path, torch.nn.Module] = {}
    for version in versions:
        path = weights.model_dir(version, root) / weights.CODEC_FILE
        same = next((codec for other, codec in loaded.items() if _same_file(other, path, root)), None)
        if same is None:
            start = time.perf_counter()
            with _skipping_random_init():
                same = loaded[path] = loaders.load_compression_model(str(path.parent), device=device)
            log.info("loaded the EnCodec %s in %.1f s", path, time.perf_counter() - start)
        codecs[version] = same
    return codecs


def assemble(name: str, codec: torch.nn.Module, lm: torch.nn.Module) -> MusicGen:
    """What `MusicGen.get_pretrained` builds from a loaded LM and EnCodec, melody settings included."""
    if "self_wav" in lm.condition_provider.conditioners:
        lm.condition_provider.conditioners["self_wav"].match_len_on_eval = True
        lm.condition_provider.conditioners["self_wav"]._use_masking = False
    return MusicGen(name, codec, lm)


def _same_file(a: Path, b: Path, root: Path) -> bool:
    """Whether two checkpoint files hold the same bytes: the downloader's records (sha256) when
    both have one, else a byte comparison (under a second for the 236 MB EnCodec)."""
    if a == b:
        return True
    if a.stat().st_size != b.stat().st_size:
        return False
    digests = []
    for path in (a, b):
        record = weights.read_record(path.relative_to(root).as_posix(), root)
        digests.append(record.get("sha256") if record.get("size") == path.stat().st_size else None)
    if None not in digests:
        return digests[0] == digests[1]
    return filecmp.cmp(a, b, shallow=False)


def _in_parallel(load: Callable[[Path], torch.nn.Module], paths: dict[str, Path]) -> dict[str, torch.nn.Module]:
    """load(path) for every version at once, one thread each: reading one checkpoint overlaps
    with building and copying the other."""
    with ThreadPoolExecutor(max_workers=len(paths), thread_name_prefix="load") as pool:
        futures = {version: pool.submit(load, path) for version, path in paths.items()}
        return {version: future.result() for version, future in futures.items()}


# ---------------------------------------------------------------------------------------------
# Cold start: hooks around audiocraft's loaders, installed only while setup() loads.

_thread = threading.local()  # .skip_init: this thread is building modules a checkpoint overwrites


@contextlib.contextmanager
def fast_loading() -> Iterator[None]:
    """While loading: memory-map checkpoints, allow skipping random init, share T5.

    - audiocraft's `load_lm_model_ckpt` / `load_compression_model_ckpt` read the file with
      `torch.load(mmap=True)`: tensors are read from the page cache straight into the model's
      parameters (on the model's device, in its dtype) instead of into a full CPU copy first.
    - torch.nn.init's random fills become no-ops in threads inside _skipping_random_init();
      elsewhere (other threads, T5's own loading) they run as usual.
    - `T5EncoderModel.from_pretrained` / `T5Tokenizer.from_pretrained`, as audiocraft's
      conditioners module calls them, load each name once and hand every T5Conditioner the same
      object (the conditioner keeps it outside its state dict, so nothing writes into it).

    Everything is restored on exit. Not reentrant across threads: call it from one thread.
    """
    with contextlib.ExitStack() as stack:
        for name, filename in (
            ("load_lm_model_ckpt", weights.LM_FILE),
            ("load_compression_model_ckpt", weights.CODEC_FILE),
        ):
            stack.enter_context(_patched(loaders, name, _local_checkpoint(getattr(loaders, name), filename)))
        for name in RANDOM_INIT_FUNCTIONS:
            stack.enter_context(_patched(torch.nn.init, name, _skippable(getattr(torch.nn.init, name))))
        stack.enter_context(_patched(conditioners, "T5EncoderModel", LoadOnce(conditioners.T5EncoderModel)))
        stack.enter_context(_patched(conditioners, "T5Tokenizer", LoadOnce(conditioners.T5Tokenizer)))
        yield


@contextlib.contextmanager
def _patched(owner: object, name: str, value: object) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


def read_checkpoint(path: Path | str) -> dict:
    """torch.load of an audiocraft checkpoint, memory-mapped, safe unpickling only."""
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


def _local_checkpoint(original: Callable, filename: str) -> Callable:
    """audiocraft's `load_*_ckpt(file_or_url_or_id, cache_dir)` with local files memory-mapped;
    anything else (a hub id, a URL) still goes to audiocraft's own function."""

    def load_ckpt(file_or_url_or_id: Path | str, cache_dir: str | None = None) -> dict:
        path = Path(file_or_url_or_id)
        if path.is_dir():
            path = path / filename
        if path.is_file():
            return read_checkpoint(path)
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


def _skipping_random_init():
    """In this thread, modules are built with uninitialised weights. Only around loaders whose
    strict load_state_dict then overwrites every parameter and buffer: audiocraft's LM and EnCodec
    loaders, and demucs' load_model that the melody conditioner calls (T5 goes through LoadOnce,
    which initialises as usual). tests/test_models.py compares every tensor with get_pretrained."""
    return _random_init(skip=True)


class LoadOnce:
    """Stands in for a transformers class during setup: `from_pretrained` loads each name once
    (with normal initialisation) and returns the same object to every caller, in any thread."""

    def __init__(self, cls: type):
        self.cls = cls
        self.loaded: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def from_pretrained(self, name: str, *args, **kwargs):
        key = (name, args, tuple(sorted(kwargs.items())))
        with self._lock:
            if key not in self.loaded:
                with _random_init(skip=False):
                    self.loaded[key] = self.cls.from_pretrained(name, *args, **kwargs)
            return self.loaded[key]


# ---------------------------------------------------------------------------------------------
# Fine-tuned LM checkpoints.

LM_KEYS = ("xp.cfg", "best_state")


def check_fine_tuned(path: Path, codecs: dict[str, torch.nn.Module]) -> str:
    """The base version ("melody" or "large") the fine-tuned LM checkpoint at `path` replaces.

    Raises WeightsError unless it is an audiocraft LM export (`xp.cfg` + `best_state`) of a
    MusicGen transformer LM whose conditioners are those of melody (chroma + T5 text) or of large
    (T5 text only), with the T5 we hold, over the codec we serve (codebooks, codebook size, sample
    rate, channels), and whose weights have the dimensions its config states.
    """
    try:
        package = read_checkpoint(path)
    except pickle.UnpicklingError:
        raise WeightsError(
            f"{path} holds pickled objects: it looks like a training checkpoint. Export the LM first with "
            f"audiocraft.utils.export.export_lm (an 'xp.cfg' YAML string and 'best_state')."
        ) from None
    except Exception as error:  # not a torch.save archive at all
        raise WeightsError(f"{path} is not a torch checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(package, dict) or any(key not in package for key in LM_KEYS):
        keys = sorted(map(str, package)) if isinstance(package, dict) else type(package).__name__
        raise WeightsError(
            f"{path} is not an audiocraft LM checkpoint: it needs the keys 'xp.cfg' and 'best_state', it has {keys}"
        )
    state = package["best_state"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: its 'best_state' is a {type(state).__name__}, not a state dict")
    if "model" in state and isinstance(state["model"], dict):
        raise WeightsError(f"{path} is a training checkpoint; export it with audiocraft.utils.export.export_lm")
    try:
        cfg = omegaconf.OmegaConf.create(package["xp.cfg"])
        return _fine_tuned_version(cfg, state, codecs)
    except (omegaconf.errors.OmegaConfBaseException, AttributeError, KeyError, TypeError) as error:
        raise WeightsError(f"{path}: its 'xp.cfg' is not a MusicGen LM config ({error})") from None
    except _Unfit as error:
        raise WeightsError(f"{path} cannot replace a served model: {error}") from None


class _Unfit(Exception):
    """Why a fine-tuned checkpoint does not fit, in words."""


def _fine_tuned_version(cfg: omegaconf.DictConfig, state: dict, codecs: dict[str, torch.nn.Module]) -> str:
    if cfg.get("lm_model") != "transformer_lm":
        raise _Unfit(f"lm_model is {cfg.get('lm_model')!r}; only MusicGen's 'transformer_lm' is served")
    kinds = {str(name): str(cond.model) for name, cond in (cfg.get("conditioners") or {}).items() if name != "args"}
    if kinds == {"self_wav": "chroma_stem", "description": "t5"}:
        version = "melody"
    elif kinds == {"description": "t5"}:
        version = "large"
    else:
        raise _Unfit(
            f"its conditioners are {kinds}; melody has {{'self_wav': 'chroma_stem', 'description': 't5'}}, "
            f"large has {{'description': 't5'}}"
        )
    t5 = cfg.conditioners.description.t5
    if t5.name != weights.T5_NAME:
        raise _Unfit(f"its text encoder is {t5.name!r}; the weights root holds {weights.T5_NAME!r}")
    if t5.get("finetune", False):
        raise _Unfit("its T5 was fine-tuned with it (finetune: true); only LMs over the shared, frozen T5 are served")
    if version not in codecs:
        raise _Unfit(f"it replaces {version}, which is not being loaded")
    codec = codecs[version]
    lm = cfg.transformer_lm
    if cfg.get("interleave_stereo_codebooks", {}).get("use", False):
        raise _Unfit("it is a stereo model (interleaved codebooks); the served EnCodec is mono")
    expected = {
        "transformer_lm.n_q (codebooks)": (lm.n_q, codec.num_codebooks),
        "transformer_lm.card (codebook size)": (lm.card, codec.cardinality),
        "sample_rate": (cfg.sample_rate, codec.sample_rate),
        "channels": (cfg.channels, codec.channels),
    }
    if cfg.get("compression_model_n_q") is not None:
        expected["compression_model_n_q"] = (cfg.compression_model_n_q, codec.num_codebooks)
    for what, (value, served) in expected.items():
        if value != served:
            raise _Unfit(f"{what} is {value}; the served EnCodec has {served}")
    shapes = {"emb.0.weight": (lm.card + 1, lm.dim), "linears.0.weight": (lm.card, lm.dim)}
    shapes |= {f"linears.{q}.weight": (lm.card, lm.dim) for q in range(lm.n_q)}
    for key, shape in shapes.items():
        tensor = state.get(key)
        if tensor is None or tuple(tensor.shape) != shape:
            found = "missing" if tensor is None else tuple(tensor.shape)
            raise _Unfit(f"its weight {key} is {found}, its config (dim {lm.dim}, card {lm.card}) says {shape}")
    layers = {key.split(".")[2] for key in state if key.startswith("transformer.layers.")}
    if len(layers) != lm.num_layers:
        raise _Unfit(f"it has {len(layers)} transformer layers, its config says {lm.num_layers}")
    return version


# ---------------------------------------------------------------------------------------------
# What is resident.


def resident_components(models: LoadedModels) -> dict[str, list[torch.nn.Module]]:
    """Every loaded module by component: `lm:<version>`, `codec`, `t5`, `demucs`, `mbd` once
    loaded. A module shared by several models appears once (T5, EnCodec); distinct copies get
    the version in their name (`codec:large`)."""
    found: dict[str, list[tuple[str, torch.nn.Module]]] = collections.defaultdict(list)
    for version, model in models.generators.items():
        found[f"lm:{version}"].append((version, model.lm))
        found["codec"].append((version, model.compression_model))
        for conditioner in model.lm.condition_provider.conditioners.values():
            for name in ("t5", "demucs"):  # kept in __dict__, outside the LM's modules
                module = conditioner.__dict__.get(name)
                if isinstance(module, torch.nn.Module):
                    found[name].append((version, module))
    if models._mbd is not None:
        for process in models._mbd.DPs:
            found["mbd"].append(("mbd", process.model))
            found["mbd"].append(("mbd", process.schedule.sample_processor))
    components: dict[str, list[torch.nn.Module]] = {}
    for name, owners in found.items():
        distinct = list({id(module): (owner, module) for owner, module in owners}.values())
        if len(distinct) == 1 or name == "mbd" or name.startswith("lm:"):
            components[name] = [module for _, module in distinct]
        else:
            for owner, module in distinct:
                components[f"{name}:{owner}"] = [module]
    return components


def memory_report(models: LoadedModels) -> dict[str, int]:
    """Bytes resident per component (parameters and buffers; a storage shared by several
    components is counted once, under the first), then the process as a whole: `process_rss`
    (VmRSS) and, on CUDA, `cuda_allocated`."""
    report: dict[str, int] = {}
    seen: set[tuple[str, int]] = set()
    for name, modules in resident_components(models).items():
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
    if models.device.startswith("cuda"):
        report["cuda_allocated"] = torch.cuda.memory_allocated()
    return report


def format_memory(report: dict[str, int]) -> str:
    """`lm:melody 5.54 GB, codec 236.0 MB, ...` for the log."""
    return ", ".join(
        f"{name} {size / GB:.2f} GB" if size >= GB else f"{name} {size / MB:.1f} MB" for name, size in report.items()
    )


def release_freed_memory() -> None:
    """Hand the C allocator's free pages back to the system (glibc's malloc_trim; elsewhere a no-op).

    Loading frees gigabytes of temporary buffers, many in the loader threads' own malloc arenas,
    which glibc keeps for reuse: about 0.6 GB of RSS after loading the 1.5 B melody LM on CPU.
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


# ---------------------------------------------------------------------------------------------


def load_mbd(codec, device: str, path: Path | None = None) -> MultiBandDiffusion:
    """MultiBand Diffusion for 32 kHz MusicGen tokens, over the already loaded EnCodec.

    What `MultiBandDiffusion.get_mbd_musicgen()` does, from the weights root instead of the hub.
    """
    path = path or weights.mbd_path()
    if not path.is_file():
        weights.check_present(["mbd"])
    start = time.perf_counter()
    try:
        with torch.serialization.safe_globals(MBD_SAFE_GLOBALS):
            models, processors, cfgs = load_diffusion_models(str(path), device=device)
    except pickle.UnpicklingError as error:
        raise WeightsError(
            f"{path} holds objects outside the MultiBand Diffusion allow-list; refusing to unpickle them: {error}"
        ) from None
    processes = [
        DiffusionProcess(
            model=model, noise_schedule=NoiseSchedule(**cfg.schedule, sample_processor=processor, device=device)
        )
        for model, processor, cfg in zip(models, processors, cfgs, strict=True)
    ]
    log.info("loaded MultiBand Diffusion on %s in %.1f s", device, time.perf_counter() - start)
    return MultiBandDiffusion(DPs=processes, codec_model=codec)
