"""The weights root: where every checkpoint lives, the offline environment, presence checks.

Layout under the root (default `weights/` in the repository, `MUSICGEN_WEIGHTS` overrides):

    musicgen-melody/state_dict.bin              LM, audiocraft export format (text + chroma)
    musicgen-melody/compression_state_dict.bin  EnCodec 32 kHz
    musicgen-large/state_dict.bin               LM, text only
    musicgen-large/compression_state_dict.bin
    multiband-diffusion/mbd_musicgen_32khz.th   MultiBand Diffusion decoder (loaded lazily)
    huggingface/                                HF_HOME: hub/models--t5-base/... (T5 encoder + tokenizer)
    torch/                                      TORCH_HOME: hub/checkpoints/<htdemucs file> (melody stems)
    .verified/                                  the downloader's records (size, sha256) of verified files
    fine-tuned/<key>/<file>                     fine-tuned LM checkpoints fetched from a URL (setup(weights=URL))

Everything the engine reads is under the root, and loading never touches the network. Which files
each model_version needs, and where they come from, is listed once, in musicgen.manifest;
`python -m musicgen download` (musicgen.download) fetches them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import sys
import urllib.parse
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
RECORD_DIR = ".verified"  # <root>/.verified/<dest>.json: what the downloader verified (size, sha256)
PARTIAL_SUFFIX = ".part"  # a download in progress; renamed to the final name once verified
DOWNLOAD_ON_SETUP_ENV = "MUSICGEN_DOWNLOAD_ON_SETUP"  # "1": setup() may fetch missing weights
FINE_TUNED_DIR = "fine-tuned"  # <root>/fine-tuned/<sha256 of the URL, 16 hex>/<file name in the URL>
URL_SCHEMES = ("http://", "https://")

log = logging.getLogger(__name__)


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


def record_path(dest: str, root: Path | None = None) -> Path:
    """The downloader's record of a verified file (size, sha256), kept outside the loaders' folders."""
    return (root or weights_root()) / RECORD_DIR / f"{dest}.json"


def read_record(dest: str, root: Path | None = None) -> dict:
    """The downloader's record of `dest` ({"size", "sha256", ...}); {} when there is none or it is unreadable."""
    try:
        record = json.loads(record_path(dest, root).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _loader_path(artifact, root: Path) -> Path:
    """Where the loader reads a manifest file: Hugging Face cache files through `refs/main`."""
    if artifact.hub_ref:
        ref = root / artifact.hub_ref
        if ref.is_file():
            return ref.parent.parent / "snapshots" / ref.read_text().strip() / artifact.path
    return root / artifact.dest


def required_files(version: str, root: Path | None = None, manifest=None) -> list[Path]:
    """Every file that must exist before `version` (a model_version, or "mbd") can be loaded.

    Derived from musicgen.manifest (or `manifest`): the same entries the downloader fetches. Files
    in the Hugging Face cache are looked up in the snapshot `refs/main` names (the demo weights use
    their own).
    """
    from musicgen.manifest import MANIFEST

    root = root or weights_root()
    files: list[Path] = []
    for artifact in (manifest or MANIFEST).artifacts([version]):
        if artifact.hub_ref:
            files.append(root / artifact.hub_ref)
        files.append(_loader_path(artifact, root))
    return list(dict.fromkeys(files))


def _problem(path: Path, artifact, root: Path) -> str | None:
    """Why a required file is unusable, or None. Only stat() calls: this runs in milliseconds."""
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    if not path.is_file():
        if partial.is_file():
            return f"incomplete: an interrupted download left {partial.stat().st_size} bytes in {partial.name}"
        return "missing"
    if artifact is not None and path == root / artifact.dest:
        expected = read_record(artifact.dest, root).get("size")
        if isinstance(expected, int):
            size = path.stat().st_size
            if size != expected:
                return f"{size} bytes, but {expected} were downloaded and verified: truncated or replaced since"
    return None


def download_command(versions: list[str], root: Path | None = None) -> str:
    """The exact `python -m musicgen download ...` command that provides `versions` under `root`."""
    command = f"python -m musicgen download {' '.join(dict.fromkeys(versions))}"
    if root is not None and Path(root).resolve() != weights_root():
        command += f" --root {shlex.quote(str(root))}"
    return command


def check_present(versions: list[str], root: Path | None = None, manifest=None) -> None:
    """Raise WeightsError naming every missing or partial file and the command that provides them.

    Never touches the network and never waits: a fast, clear failure instead of a retry loop.
    """
    from musicgen.manifest import MANIFEST

    root = root or weights_root()
    manifest = manifest or MANIFEST
    problems: dict[Path, str] = {}
    for version in versions:
        artifacts = manifest.artifacts([version])
        by_path = {_loader_path(artifact, root): artifact for artifact in artifacts}
        for path in required_files(version, root, manifest):
            problem = _problem(path, by_path.get(path), root)
            if problem:
                problems.setdefault(path, problem)
    if problems:
        listing = "\n".join(f"  {path}: {problem}" for path, problem in problems.items())
        raise WeightsError(
            f"Weights missing or incomplete under {root}:\n{listing}\n"
            f"Fetch them with:\n  {download_command(versions, root)}\n"
            f"(or set {DOWNLOAD_ON_SETUP_ENV}=1 to let setup() fetch them; for tests, write tiny random demo "
            f"checkpoints with `python -m musicgen demo-weights {root}`)."
        )


def download_allowed() -> bool:
    """The operator's switch: may setup() download missing weights? Off unless set to 1/true/yes."""
    return os.environ.get(DOWNLOAD_ON_SETUP_ENV, "").strip().lower() in ("1", "true", "yes")


def ensure_weights(
    versions: list[str], root: Path | None = None, allow_download: bool | None = None, manifest=None
) -> None:
    """Make sure `versions` can load: present -> return at once; missing -> download when the
    operator allows it ($MUSICGEN_DOWNLOAD_ON_SETUP=1, or allow_download=True), else raise the
    WeightsError of check_present() immediately, without touching the network.
    """
    from musicgen.manifest import MANIFEST

    root = root or weights_root()
    manifest = manifest or MANIFEST
    try:
        check_present(versions, root, manifest)
        return
    except WeightsError:
        if not (download_allowed() if allow_download is None else allow_download):
            raise
    from musicgen.download import DownloadError, download

    log.info("weights missing under %s; downloading %s (%s=1)", root, ", ".join(versions), DOWNLOAD_ON_SETUP_ENV)
    try:
        download(versions, root=root, manifest=manifest)
    except DownloadError as error:
        raise WeightsError(f"{error}\nRetry (it resumes) with:\n  {download_command(versions, root)}") from None
    check_present(versions, root, manifest)


def fine_tuned_checkpoint(source: str | os.PathLike, root: Path | None = None) -> Path:
    """The local file of a fine-tuned LM checkpoint given as a path or an http(s) URL.

    A path names the checkpoint file, or a folder holding `state_dict.bin` (the layout of the
    released models). A URL is downloaded once into `<root>/fine-tuned/<key>/<its file name>`
    (`<key>`: the first 16 hex digits of the URL's SHA-256) by musicgen.download: resumable,
    verified, renamed into place only when complete; later setups reuse it without the network.
    """
    root = root or weights_root()
    text = os.fspath(source).strip()
    if not text.startswith(URL_SCHEMES):
        path = Path(text).expanduser()
        if path.is_dir():
            path = path / LM_FILE
        if not path.is_file():
            raise WeightsError(
                f"fine-tuned checkpoint {text!r}: no such file (a checkpoint file, or a folder holding {LM_FILE})"
            )
        return path.resolve()

    from musicgen.download import DownloadError, download
    from musicgen.manifest import Artifact, Manifest

    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(text).path)).name
    if name in ("", ".", ".."):
        name = LM_FILE
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    artifact = Artifact(name=f"fine-tuned LM {name}", dest=f"{FINE_TUNED_DIR}/{key}/{name}", url=text)
    path = root / artifact.dest
    if path.is_file() and _problem(path, artifact, root) is None and record_path(artifact.dest, root).is_file():
        return path
    log.info("downloading the fine-tuned checkpoint %s to %s", text, path)
    try:
        download(["fine-tuned"], root=root, manifest=Manifest(targets={"fine-tuned": (artifact,)}), progress=False)
    except DownloadError as error:
        raise WeightsError(f"fine-tuned checkpoint: {error}") from None
    return path


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
