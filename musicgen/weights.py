"""The weights root: where every checkpoint lives, the offline environment, presence checks.

Layout under the root (default `weights/` in the repository, `MUSICGEN_WEIGHTS` overrides):

    musicgen-melody/state_dict.bin              LM, audiocraft export format (text + chroma)
    musicgen-melody/compression_state_dict.bin  EnCodec 32 kHz
    musicgen-large/state_dict.bin               LM, text only
    musicgen-large/compression_state_dict.bin
    multiband-diffusion/mbd_musicgen_32khz.th   MultiBand Diffusion decoder (loaded lazily)
    huggingface/                                HF_HOME: hub/models--t5-base/... (T5 encoder + tokenizer)
    torch/                                      TORCH_HOME: hub/checkpoints/<htdemucs file> (melody stems)

Everything the engine reads is under the root, and loading never touches the network.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from musicgen.errors import WeightsError

REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPOSITORY / "weights"

MODEL_DIRS = {"melody": "musicgen-melody", "large": "musicgen-large"}
LM_FILE = "state_dict.bin"
CODEC_FILE = "compression_state_dict.bin"
MBD_DIR = "multiband-diffusion"
MBD_FILE = "mbd_musicgen_32khz.th"
T5_NAME = "t5-base"  # the text encoder name the released LM checkpoints reference
HF_DIR = "huggingface"
TORCH_DIR = "torch"
# demucs.pretrained.get_model("htdemucs") reads this file from the torch hub cache.
HTDEMUCS_FILE = "955717e8-8726e21a.th"


def weights_root() -> Path:
    """The weights root: $MUSICGEN_WEIGHTS, else `weights/` in the repository."""
    return Path(os.environ.get("MUSICGEN_WEIGHTS") or DEFAULT_ROOT).expanduser().resolve()


def model_dir(version: str, root: Path | None = None) -> Path:
    return (root or weights_root()) / MODEL_DIRS[version]


def hf_home(root: Path | None = None) -> Path:
    return (root or weights_root()) / HF_DIR


def torch_home(root: Path | None = None) -> Path:
    return (root or weights_root()) / TORCH_DIR


def mbd_path(root: Path | None = None) -> Path:
    return (root or weights_root()) / MBD_DIR / MBD_FILE


def t5_snapshot(root: Path | None = None) -> Path:
    """The snapshot folder `refs/main` of the T5 repo points at in the Hugging Face cache."""
    repo = hf_home(root) / "hub" / f"models--{T5_NAME}"
    ref = repo / "refs" / "main"
    if not ref.is_file():
        return repo / "snapshots" / "<missing refs/main>"
    return repo / "snapshots" / ref.read_text().strip()


def htdemucs_path(root: Path | None = None) -> Path:
    return torch_home(root) / "hub" / "checkpoints" / HTDEMUCS_FILE


def required_files(version: str, root: Path | None = None) -> list[Path]:
    """Every file that must exist before `version` can be loaded."""
    root = root or weights_root()
    files = [model_dir(version, root) / LM_FILE, model_dir(version, root) / CODEC_FILE]
    files += [t5_snapshot(root) / "config.json"]
    if version == "melody":
        files.append(htdemucs_path(root))
    return files


def check_present(versions: list[str], root: Path | None = None) -> None:
    """Raise WeightsError naming every missing file and the commands that provide them."""
    root = root or weights_root()
    missing = [path for version in versions for path in required_files(version, root)]
    missing = [path for path in dict.fromkeys(missing) if not path.is_file()]
    if missing:
        listing = "\n".join(f"  {path}" for path in missing)
        raise WeightsError(
            f"Missing weights under {root}:\n{listing}\n"
            f"Fetch the real checkpoints with `python -m musicgen download {' '.join(versions)}`, "
            f"or write tiny random demo checkpoints with `python -m musicgen demo-weights {root}`."
        )


def configure_offline_environment(root: Path | None = None) -> Path:
    """Point every cache at the weights root and switch Hugging Face to offline mode.

    Must run before huggingface_hub / transformers / audiocraft are imported: they read these
    variables once, at import time.
    """
    root = root or weights_root()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub import constants

        if not constants.HF_HUB_OFFLINE:
            raise RuntimeError(
                "huggingface_hub was imported before the offline environment was configured; "
                "call musicgen.weights.configure_offline_environment() first"
            )
    os.environ["HF_HOME"] = str(hf_home(root))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["TORCH_HOME"] = str(torch_home(root))
    return root
