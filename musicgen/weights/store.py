"""Whether the weights a deployment needs are in place, and getting them when the operator allows it.

check_present() is the fast load-time check (stat() calls only; a clear error naming every missing
file and the command that fetches it); ensure_weights() adds the operator's download-on-setup
switch; fine_tuned_checkpoint() turns setup(weights=...) into a local file, downloading a URL once.
Which files each model_version needs is musicgen.weights.manifest's; where they go is layout's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import urllib.parse
from pathlib import Path

from musicgen.errors import WeightsError
from musicgen.settings import DEFAULT_ROOT
from musicgen.weights.download import DownloadError, download
from musicgen.weights.layout import ADAPTER_FILE, FINE_TUNED_DIR, LM_FILE, PARTIAL_SUFFIX, read_record, record_path
from musicgen.weights.manifest import MANIFEST, Artifact, Manifest

URL_SCHEMES = ("http://", "https://")

log = logging.getLogger(__name__)


def _loader_path(artifact, root: Path) -> Path:
    """Where the loader reads a manifest file: Hugging Face cache files through `refs/main`."""
    if artifact.hub_ref:
        ref = root / artifact.hub_ref
        if ref.is_file():
            return ref.parent.parent / "snapshots" / ref.read_text().strip() / artifact.path
    return root / artifact.dest


def required_files(version: str, root: Path, manifest=None) -> list[Path]:
    """Every file that must exist before `version` (a model_version, or "mbd") can be loaded.

    Derived from musicgen.weights.manifest (or `manifest`): the same entries the downloader fetches. Files
    in the Hugging Face cache are looked up in the snapshot `refs/main` names (the demo weights use
    their own).
    """
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


def download_command(versions: list[str], root: Path) -> str:
    """The exact `python -m musicgen download ...` command that provides `versions` under `root`."""
    command = f"python -m musicgen download {' '.join(dict.fromkeys(versions))}"
    if Path(root).resolve() != DEFAULT_ROOT:
        command += f" --root {shlex.quote(str(root))}"
    return command


def check_present(versions: list[str], root: Path, manifest=None) -> None:
    """Raise WeightsError naming every missing or partial file and the command that provides them.

    Never touches the network and never waits: a fast, clear failure instead of a retry loop.
    """
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
            f"(or set MUSICGEN_DOWNLOAD_ON_SETUP=1 to let setup() fetch them; for tests, write tiny random demo "
            f"checkpoints with `python -m musicgen demo-weights {root}`)."
        )


def is_present(versions: list[str], root: Path) -> bool:
    """Whether every file `versions` need is in place (check_present without the message)."""
    try:
        check_present(versions, root)
    except WeightsError:
        return False
    return True


def ensure_weights(
    versions: list[str], root: Path, allow_download: bool = False, manifest=None, hub: str | None = None
) -> None:
    """Make sure `versions` can load: present -> return at once; missing -> download from `hub`
    when the operator allows it (`allow_download`: MUSICGEN_DOWNLOAD_ON_SETUP), else raise the
    WeightsError of check_present() immediately, without touching the network.
    """
    manifest = manifest or MANIFEST
    try:
        check_present(versions, root, manifest)
        return
    except WeightsError:
        if not allow_download:
            raise
    log.info("weights missing under %s; downloading %s (MUSICGEN_DOWNLOAD_ON_SETUP=1)", root, ", ".join(versions))
    try:
        download(versions, root=root, manifest=manifest, hub=hub)
    except DownloadError as error:
        raise WeightsError(f"{error}\nRetry (it resumes) with:\n  {download_command(versions, root)}") from None
    check_present(versions, root, manifest)


def fine_tuned_checkpoint(source: str | os.PathLike, root: Path) -> Path:
    """The local file of a fine-tuned LM checkpoint given as a path or an http(s) URL.

    A path names the checkpoint file, or a folder holding `state_dict.bin` (the layout of the
    released models) or `adapter.safetensors` (a LoRA training's output). A URL is downloaded once into `<root>/fine-tuned/<key>/<its file name>`
    (`<key>`: the first 16 hex digits of the URL's SHA-256) by musicgen.weights.download: resumable,
    verified, renamed into place only when complete; later setups reuse it without the network.
    """
    text = os.fspath(source).strip()
    if not text.startswith(URL_SCHEMES):
        path = Path(text).expanduser()
        if path.is_dir():
            path = path / (ADAPTER_FILE if (path / ADAPTER_FILE).is_file() else LM_FILE)
        if not path.is_file():
            raise WeightsError(
                f"fine-tuned checkpoint {text!r}: no such file (a checkpoint or adapter file, or a folder holding "
                f"{LM_FILE} or {ADAPTER_FILE})"
            )
        return path.resolve()

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
