"""The weights root's layout: where every checkpoint lives, the downloader's records, the hub environment.

Layout under the root (default `weights/` in the repository, `MUSICGEN_WEIGHTS` overrides):

    musicgen-<version>/state_dict.bin           every model version's LM (versions.VERSIONS), audiocraft export format
    musicgen-<version>/compression_state_dict.bin
                                                EnCodec 32 kHz, or (ModelVersion.ships_codec False) a
                                                pointer: {'pretrained': 'facebook/encodec_32khz'}
    multiband-diffusion/mbd_musicgen_32khz.th   MultiBand Diffusion decoder (loaded lazily)
    huggingface/                                HF_HOME: hub/models--t5-base/... (T5 encoder + tokenizer),
                                                hub/models--facebook--encodec_32khz/... (the pointed-to EnCodec)
    torch/                                      TORCH_HOME: hub/checkpoints/<htdemucs file> (melody stems)
    .verified/                                  the downloader's records (size, sha256) of verified files
    fine-tuned/<key>/<file>                     fine-tuned LM checkpoints fetched from a URL (setup(weights=URL))

Everything the engine reads is under the root, and loading never touches the network: every
entry point calls musicgen.boot.boot() (which calls configure_hub()) before anything imports huggingface_hub, transformers,
audiocraft or demucs. This module imports only musicgen.settings and musicgen.versions (plain data), so anything may import it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

from musicgen.settings import ROOT_ENV
from musicgen.versions import GENERATING

MODEL_DIRS = {name: version.folder for name, version in GENERATING.items()}  # model_version -> its folder
LM_FILE = "state_dict.bin"
ADAPTER_FILE = "adapter.safetensors"  # a LoRA training's output (musicgen.lora.adapter)
CODEC_FILE = "compression_state_dict.bin"
MBD_DIR = "multiband-diffusion"
MBD_FILE = "mbd_musicgen_32khz.th"
T5_NAME = "t5-base"  # the text encoder name the released LM checkpoints reference
# The Hugging Face EnCodec that the melody-large and stereo checkpoints' compression_state_dict.bin
# points to ({'pretrained': ENCODEC_HF_NAME}); audiocraft loads it with transformers' EncodecModel.
ENCODEC_HF_NAME = "facebook/encodec_32khz"
HF_DIR = "huggingface"
TORCH_DIR = "torch"
# demucs.pretrained.get_model("htdemucs") reads this file from the torch hub cache.
HTDEMUCS_FILE = "955717e8-8726e21a.th"
RECORD_DIR = ".verified"  # <root>/.verified/<dest>.json: what the downloader verified (size, sha256)
PARTIAL_SUFFIX = ".part"  # a download in progress; renamed to the final name once verified
FINE_TUNED_DIR = "fine-tuned"  # <root>/fine-tuned/<sha256 of the URL, 16 hex>/<file name in the URL>
# Cache locations the Hugging Face libraries read instead of the ones under HF_HOME: removed.
_HUB_OVERRIDES = ("HF_HUB_CACHE", "TRANSFORMERS_CACHE", "HUGGINGFACE_HUB_CACHE")


def model_dir(version: str, root: Path) -> Path:
    return root / MODEL_DIRS[version]


def hf_home(root: Path) -> Path:
    return root / HF_DIR


def torch_home(root: Path) -> Path:
    return root / TORCH_DIR


def mbd_path(root: Path) -> Path:
    return root / MBD_DIR / MBD_FILE


def htdemucs_path(root: Path) -> Path:
    return torch_home(root) / "hub" / "checkpoints" / HTDEMUCS_FILE


def record_path(dest: str, root: Path) -> Path:
    """The downloader's record of a verified file (size, sha256), kept outside the loaders' folders."""
    return root / RECORD_DIR / f"{dest}.json"


def read_record(dest: str, root: Path) -> dict:
    """The downloader's record of `dest` ({"size", "sha256", ...}); {} when there is none or it is unreadable."""
    try:
        record = json.loads(record_path(dest, root).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def hub_environment(root: Path) -> dict[str, str]:
    """The variables that point every cache at `root`, keep the Hugging Face hub offline and its loading quiet."""
    return {
        ROOT_ENV: str(root),
        "HF_HOME": str(hf_home(root)),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' per-load "Loading weights" bars
        "TORCH_HOME": str(torch_home(root)),
    }


def set_hub_environment(env: MutableMapping[str, str], root: Path) -> None:
    """Write hub_environment(root) into `env` (os.environ, or a child process's), dropping the overrides."""
    for name in _HUB_OVERRIDES:
        env.pop(name, None)
    env.update(hub_environment(root))


def configure_hub(root: Path) -> Path:
    """Point every cache at the weights root and switch Hugging Face to offline mode; return the root.

    Call it before huggingface_hub / transformers / audiocraft / demucs are imported (they read these
    variables once, at import time): predict.py's setup() and the CLI's main() do. Calling it again
    with the same root is harmless; calling it after huggingface_hub was imported online raises.
    """
    root = Path(root).resolve()
    check_hub(root)
    set_hub_environment(os.environ, root)
    return root


def check_hub(root: Path) -> None:
    """Raise unless huggingface_hub, where already imported, reads the cache under `root`, offline."""
    root = Path(root).resolve()
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None and not (hub.HF_HUB_OFFLINE and Path(hub.HF_HOME) == hf_home(root)):
        raise RuntimeError(
            f"huggingface_hub was imported before the weights root {root} was configured (it reads "
            f"{hub.HF_HOME}, offline={hub.HF_HUB_OFFLINE}); call musicgen.boot.boot() "
            f"before importing audiocraft or transformers"
        )
