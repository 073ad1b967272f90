"""A LoRA adapter's file: what it holds, how it is written and read, and what makes one refused.

The file is safetensors (no code runs when it is read). Tensors, float16: for every transformer
layer i and target t of musicgen.tokens.adapters.TARGETS, `layers.{i}.{t}.down` [rank, in] and
`layers.{i}.{t}.up` [out, rank]. Metadata: one entry, `musicgen_lora`, a JSON object with sorted
keys (safetensors writes several entries in no fixed order, and the same training must give the
same bytes): `format` (musicgen-lora), `format_version`, `model_version` (the base it was trained
on), `rank`, `alpha` (the update is scaled by alpha / rank), `targets`, `layers`, `dim`, `hidden`
(the LM's geometry), and `training` (the dataset's digest, the training inputs, how the loss went).

read_adapter() checks everything a file says before anything uses it: an AdapterRefused says why,
and the caller names where the file came from (lora_weights, or the served weights).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import omegaconf
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from musicgen import atomic_files
from musicgen.input_rules import MAX_LORA_RANK, MIN_LORA_RANK
from musicgen.tokens.adapters import TARGETS, LowRank
from musicgen.versions import GENERATING

FORMAT, FORMAT_VERSION = "musicgen-lora", 1
METADATA_KEY = "musicgen_lora"
MAX_LAYERS = 256  # more than any MusicGen LM (48): a file claiming more is refused before it is read
STORED_DTYPE = torch.float16


class AdapterRefused(ValueError):
    """Why a file is not an adapter this service can apply, in words."""


@dataclass(frozen=True)
class Geometry:
    """What an adapter must match in an LM: its layers, width and feed-forward width."""

    layers: int
    dim: int
    hidden: int

    @classmethod
    def of_config(cls, cfg: omegaconf.DictConfig) -> Geometry:
        """From an LM checkpoint's config (xp.cfg), read without loading its weights."""
        lm = cfg.transformer_lm
        dim = int(lm.dim)
        return cls(int(lm.num_layers), dim, int(dim * float(lm.get("hidden_scale", 4))))

    def shapes(self, target: str) -> tuple[int, int]:
        """(out, in) of `target`'s weight."""
        d, h = self.dim, self.hidden
        return {"qkv": (3 * d, d), "out_proj": (d, d), "linear1": (h, d), "linear2": (d, h)}[target]


@dataclass(frozen=True, eq=False)
class Adapter:
    """A read adapter: its tensors on the CPU (float16, as stored) and what its file says."""

    model_version: str
    rank: int
    alpha: float
    geometry: Geometry
    pairs: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]
    training: dict
    digest: str  # the file's sha256

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def on(self, device, dtype: torch.dtype) -> LowRank:
        """Its pairs on the step's device, in its dtype."""
        pairs = {key: (down.to(device, dtype), up.to(device, dtype)) for key, (down, up) in self.pairs.items()}
        return LowRank(pairs, self.rank, self.scaling)

    def check_serves(self, model_version: str, geometry: Geometry) -> None:
        """AdapterRefused unless it was trained on `model_version`, whose LM has `geometry`."""
        if self.model_version != model_version:
            raise AdapterRefused(
                f"it is an adapter of model_version={self.model_version!r}, not of {model_version!r}; "
                f"use it with model_version={self.model_version!r}"
            )
        if self.geometry != geometry:
            raise AdapterRefused(
                f"it was made for an LM of {_describe(self.geometry)}; {model_version}'s LM here has {_describe(geometry)}"
            )


def _describe(geometry: Geometry) -> str:
    return f"{geometry.layers} layers of width {geometry.dim} (feed-forward {geometry.hidden})"


def is_adapter_file(path: Path) -> bool:
    """Whether `path` looks like a safetensors file (an 8-byte header length, then JSON), not a
    torch checkpoint (a zip archive or a pickle)."""
    with open(path, "rb") as file:
        head = file.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def write_adapter(
    pairs: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]],
    model_version: str,
    rank: int,
    alpha: float,
    geometry: Geometry,
    training: dict,
    path: Path,
) -> Path:
    """Write an adapter file (atomically) at `path`."""
    tensors = {}
    for (index, target), (down, up) in sorted(pairs.items()):
        tensors[f"layers.{index}.{target}.down"] = down.detach().to("cpu", STORED_DTYPE).contiguous()
        tensors[f"layers.{index}.{target}.up"] = up.detach().to("cpu", STORED_DTYPE).contiguous()
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_version": model_version,
        "rank": rank,
        "alpha": float(alpha),
        "targets": list(TARGETS),
        "layers": geometry.layers,
        "dim": geometry.dim,
        "hidden": geometry.hidden,
        "training": training,
    }
    metadata = {METADATA_KEY: json.dumps(header, sort_keys=True)}
    with atomic_files.atomic_path(path) as staged:
        save_file(tensors, str(staged), metadata=metadata)
    return Path(path)


def read_adapter(path: Path) -> Adapter:
    """The adapter in `path`, every tensor and entry checked; AdapterRefused says what is wrong."""
    with open(path, "rb") as whole:
        digest = hashlib.file_digest(whole, "sha256").hexdigest()
    try:
        with safe_open(str(path), framework="pt") as file:
            try:
                header = json.loads((file.metadata() or {}).get(METADATA_KEY, "null"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise AdapterRefused(f"its {METADATA_KEY} entry is not JSON") from None
            if not isinstance(header, dict):
                raise AdapterRefused(f"it is not a {FORMAT} adapter (it has no {METADATA_KEY} entry)")
            model_version, rank, alpha, geometry = _header(header)
            expected = {
                f"layers.{index}.{target}.{part}"
                for index in range(geometry.layers)
                for target in TARGETS
                for part in ("down", "up")
            }
            names = set(file.keys())
            if names != expected:
                missing, extra = sorted(expected - names), sorted(names - expected)
                raise AdapterRefused(
                    f"its tensors are not those of rank-{rank} adapters on {geometry.layers} layers "
                    f"(missing {missing[:3]}, unexpected {extra[:3]})"
                )
            pairs = {}
            for index in range(geometry.layers):
                for target in TARGETS:
                    out, inner = geometry.shapes(target)
                    down = _tensor(file, f"layers.{index}.{target}.down", (rank, inner))
                    up = _tensor(file, f"layers.{index}.{target}.up", (out, rank))
                    pairs[index, target] = (down, up)
            training = header.get("training")
    except SafetensorError as error:
        raise AdapterRefused(f"it is not a readable safetensors file ({error})") from None
    return Adapter(model_version, rank, alpha, geometry, pairs, training if isinstance(training, dict) else {}, digest)


def _header(header: dict) -> tuple[str, int, float, Geometry]:
    if header.get("format") != FORMAT:
        raise AdapterRefused(f"it is not a {FORMAT} adapter (its format entry is {header.get('format')!r})")
    if header.get("format_version") != FORMAT_VERSION:
        raise AdapterRefused(
            f"it is format version {header.get('format_version')!r}; this service reads version {FORMAT_VERSION}"
        )
    model_version = header.get("model_version")
    if model_version not in GENERATING:
        raise AdapterRefused(f"its model_version {model_version!r} is not one of: {', '.join(GENERATING)}")
    numbers = [header.get(key) for key in ("rank", "layers", "dim", "hidden")]
    if not all(type(number) is int for number in numbers) or type(header.get("alpha")) not in (int, float):
        raise AdapterRefused("its rank, alpha, layers, dim or hidden entry is not a number")
    (rank, layers, dim, hidden), alpha = numbers, float(header["alpha"])
    if not MIN_LORA_RANK <= rank <= MAX_LORA_RANK:
        raise AdapterRefused(f"its rank is {rank}; it must be from {MIN_LORA_RANK} to {MAX_LORA_RANK}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise AdapterRefused(f"its alpha is {alpha}; it must be a positive number")
    if not (0 < layers <= MAX_LAYERS and 0 < dim and 0 < hidden):
        raise AdapterRefused(f"its geometry (layers {layers}, dim {dim}, hidden {hidden}) is not an LM's")
    if header.get("targets") != list(TARGETS):
        raise AdapterRefused(f"its targets are {header.get('targets')}; this service applies {list(TARGETS)}")
    return model_version, rank, alpha, Geometry(layers, dim, hidden)


def _tensor(file, name: str, shape: tuple[int, int]) -> torch.Tensor:
    declared = file.get_slice(name)
    if tuple(declared.get_shape()) != shape or declared.get_dtype() not in ("F16", "BF16", "F32"):
        raise AdapterRefused(
            f"its tensor {name} is {declared.get_dtype()} {tuple(declared.get_shape())}; it must be float {shape}"
        )
    tensor = file.get_tensor(name)
    if not torch.isfinite(tensor).all():
        raise AdapterRefused(f"its tensor {name} holds NaN or infinite values")
    return tensor.to(STORED_DTYPE)
