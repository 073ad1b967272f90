"""The manifest, `python -m musicgen download` and the load-time weight checks.

Downloads run for real, over HTTP, against a stand-in of the Hugging Face hub on loopback (selected
with HF_ENDPOINT, as for a mirror): its `resolve` endpoint redirects weight files to a CDN path, as
the hub does for LFS files, honours Range requests, answers 404 for unknown files and can cut a
transfer mid-way. Nothing here reaches the real network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import LoopbackServer

from musicgen.cli import main
from musicgen.errors import WeightsError
from musicgen.settings import read_settings
from musicgen.versions import MODEL_VERSIONS
from musicgen.weights import layout, store
from musicgen.weights.download import DownloadError, download
from musicgen.weights.manifest import MANIFEST, UNPINNED_REPOS, Artifact, Manifest
from tooling.loopback import QuietHandler

REPOSITORY = Path(__file__).resolve().parent.parent
REVISION = "0123456789abcdef0123456789abcdef01234567"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class QuietServer(ThreadingHTTPServer):
    """The stand-in's clients hang up mid-transfer on purpose: record those errors, print nothing
    (a printed traceback would land in the stderr that the CLI tests read)."""

    errors: list[BaseException] = []

    def handle_error(self, request, client_address) -> None:
        self.errors.append(sys.exc_info()[1])


class StandInHub(LoopbackServer):
    """A loopback HTTP server answering like the hub's `/{repo}/resolve/{revision}/{path}`."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}  # URL path -> content
        self.requests: list[tuple[str, str | None]] = []  # (URL path, Range header) of each GET
        self.cuts: dict[str, list[int]] = {}  # URL path -> bytes to send before dropping, per request
        self.corrupt: set[str] = set()  # URL paths served with one byte flipped
        hub = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                hub.requests.append((self.path, self.headers.get("Range")))
                data = hub.files.get(self.path)
                if data is None:
                    self._reply(404, b"Entry not found")
                    return
                if "/resolve/" in self.path and self.path.endswith((".bin", ".th", ".safetensors")):
                    self.send_response(302)  # LFS files: the hub redirects to its CDN
                    self.send_header("Location", f"/cdn/{sha256(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path in hub.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cuts = hub.cuts.get(self.path)
                if cuts:
                    self.wfile.write(body[: cuts.pop(0)])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler, server_class=QuietServer)

    def serve(self, artifact: Artifact, data: bytes) -> None:
        """Serve `data` where `artifact` points (its URL must be on this server if it has one)."""
        if artifact.url:
            assert artifact.url.startswith(self.url)
            self.files[artifact.url[len(self.url) :]] = data
        else:
            self.files[f"/{artifact.repo_id}/resolve/{artifact.revision}/{artifact.path}"] = data
            self.files[f"/cdn/{sha256(data)}"] = data

    def ranges(self, data: bytes) -> list[str | None]:
        """The Range header of every GET of this content's CDN path (LFS files)."""
        return [rng for path, rng in self.requests if path == f"/cdn/{sha256(data)}"]


@pytest.fixture
def hub():
    server = StandInHub()
    yield server
    server.close()


def hub_file(hub: StandInHub, dest: str, data: bytes, publish: bool = True, repo: str = "test/model") -> Artifact:
    """A manifest entry for `data`, served by the stand-in hub; size and sha256 published or not."""
    path = dest.rsplit("/", 1)[-1]
    artifact = Artifact(
        name=f"test {path}",
        dest=dest,
        repo_id=repo,
        revision=REVISION,
        path=path,
        size=len(data) if publish else None,
        sha256=sha256(data) if publish else None,
    )
    hub.serve(artifact, data)
    return artifact


def payload(size: int, seed: int = 0) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32) + b"\0" * (size % 32)


def single(artifact: Artifact) -> Manifest:
    return Manifest(targets={"model": (artifact,)})


# --- the real manifest -----------------------------------------------------------------------


def test_manifest_covers_every_model_version_and_mbd():
    assert set(MANIFEST.targets) == {*MODEL_VERSIONS, "mbd"}
    assert set(MANIFEST.descriptions) == set(MANIFEST.targets)
    for name in MANIFEST.targets:
        assert MANIFEST.artifacts([name]), name


def test_manifest_sources_are_pinned_and_checksums_well_formed():
    for artifact in MANIFEST.artifacts():
        assert (artifact.url is None) != (artifact.repo_id is None), artifact.name
        if artifact.repo_id:
            if artifact.repo_id in UNPINNED_REPOS:  # no revision published (manifest.py says where we looked)
                assert artifact.revision == "main", artifact.name
            else:
                assert re.fullmatch(r"[0-9a-f]{40}", artifact.revision), artifact.name
            assert artifact.path and artifact.source_url("https://hub").endswith(
                f"/{artifact.repo_id}/resolve/{artifact.revision}/{artifact.path}"
            )
        else:
            assert artifact.url.startswith("https://")
        if artifact.sha256 is not None:
            assert re.fullmatch(r"[0-9a-f]{64}", artifact.sha256), artifact.name
        assert artifact.size is None or artifact.size > 0
        # every file is verified by something the source publishes, or by the record of its download
        assert artifact.sha256 or artifact.sha256_prefix or artifact.size is None


def test_manifest_destinations_are_the_loaders_layout(tmp_path):
    def dest(path: Path) -> str:
        return path.relative_to(tmp_path).as_posix()

    for version, artifact_dir in layout.MODEL_DIRS.items():
        dests = {a.dest for a in MANIFEST.targets[version]}
        assert f"{artifact_dir}/{layout.LM_FILE}" in dests
        assert f"{artifact_dir}/{layout.CODEC_FILE}" in dests
        assert dest(layout.model_dir(version, tmp_path) / layout.LM_FILE) in dests
    assert dest(layout.htdemucs_path(tmp_path)) in {a.dest for a in MANIFEST.targets["melody"]}
    assert dest(layout.mbd_path(tmp_path)) in {a.dest for a in MANIFEST.targets["mbd"]}
    t5 = [a for a in MANIFEST.targets["large"] if a.hub_ref]
    assert {a.path for a in t5} == {"config.json", "model.safetensors", "tokenizer.json"}
    cache = dest(layout.hf_home(tmp_path) / "hub" / f"models--{layout.T5_NAME}")
    for artifact in t5:
        assert artifact.hub_ref == f"{cache}/refs/main"
        assert artifact.dest == f"{cache}/snapshots/{artifact.revision}/{artifact.path}"
    htdemucs = next(a for a in MANIFEST.artifacts() if a.url)
    assert htdemucs.url.endswith("/" + layout.HTDEMUCS_FILE)
    assert layout.HTDEMUCS_FILE == f"955717e8-{htdemucs.sha256_prefix}.th"  # torch hub's convention
    # the presence check reads the same list
    for version in MANIFEST.targets:
        expected = {tmp_path / a.dest for a in MANIFEST.artifacts([version])}
        expected |= {tmp_path / a.hub_ref for a in MANIFEST.artifacts([version]) if a.hub_ref}
        assert set(store.required_files(version, tmp_path)) == expected


def test_download_help_lists_models_and_sizes(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["download", "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    for name in MANIFEST.targets:
        assert re.search(rf"^  {re.escape(name)} +\S*.*GB", out, re.MULTILINE), name


# --- downloading -----------------------------------------------------------------------------


@pytest.mark.slow
def test_full_download_of_the_demo_weights_into_the_loaders_layout(demo_weights, hub, tmp_path):
    """The stand-in hub serves the demo checkpoints at the real manifest's repos, revisions and paths;
    `download --all` must rebuild them byte for byte, in the layout check_present and the loaders read."""
    served: dict[str, bytes] = {}
    targets = {}
    replaced: dict[str, Artifact] = {}
    for artifact in MANIFEST.artifacts():
        data = store._loader_path(artifact, demo_weights).read_bytes()
        digest = sha256(data)
        changes = {"size": len(data), "sha256": digest}
        if artifact.url:
            changes["url"] = f"{hub.url}/demucs/{layout.HTDEMUCS_FILE}"
            changes["sha256_prefix"] = digest[:8]
        replaced[artifact.dest] = dataclasses.replace(artifact, **changes)
        hub.serve(replaced[artifact.dest], data)
        served[artifact.dest] = data
    for name, files in MANIFEST.targets.items():
        targets[name] = tuple(replaced[a.dest] for a in files)
    manifest = Manifest(targets=targets, descriptions=MANIFEST.descriptions)
    root = tmp_path / "weights"

    results = download(list(targets), root=root, hub=hub.url, manifest=manifest, progress=False)

    assert {r.status for r in results} == {"downloaded"}
    for dest, data in served.items():
        assert (root / dest).read_bytes() == data, dest
        assert json.loads(layout.record_path(dest, root).read_text())["sha256"] == sha256(data)
    t5 = next(a for a in manifest.artifacts() if a.hub_ref)
    assert (root / t5.hub_ref).read_text() == t5.revision
    assert not list(root.rglob("*.part"))
    store.check_present(list(targets), root)  # the real manifest's check accepts the layout

    before = len(hub.requests)
    again = download(list(targets), root=root, hub=hub.url, manifest=manifest, progress=False)
    assert {r.status for r in again} == {"present"} and len(hub.requests) == before

    # and the real loaders load it, offline (a fresh process: the caches bind at import)
    env = {**os.environ, "MUSICGEN_WEIGHTS": str(root), "HF_ENDPOINT": "http://127.0.0.1:9"}
    code = "from musicgen.boot import boot; settings = boot()\n"
    code += "from musicgen.models.load import load_models; print(sorted(load_models(settings).resident))"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPOSITORY, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "['large', 'melody']" in done.stdout


def test_interrupted_transfer_resumes_with_only_the_remaining_bytes(hub, tmp_path):
    data = payload(600_000)
    artifact = hub_file(hub, "musicgen-large/state_dict.bin", data)
    dest = tmp_path / artifact.dest
    cdn = f"/cdn/{sha256(data)}"
    hub.cuts[cdn] = [250_000]

    with pytest.raises(DownloadError, match="interrupted after 250000 bytes.*run the same command again"):
        download(["model"], root=tmp_path, hub=hub.url, manifest=single(artifact), attempts=1, progress=False)
    # atomic: nothing under the final name, the bytes kept in the .part
    assert not dest.exists()
    assert (tmp_path / (artifact.dest + ".part")).stat().st_size == 250_000
    with pytest.raises(WeightsError, match=r"state_dict\.bin: incomplete: an interrupted download left 250000"):
        store.check_present(["model"], tmp_path, single(artifact))

    [result] = download(["model"], root=tmp_path, hub=hub.url, manifest=single(artifact), progress=False)

    assert result.status == "downloaded" and dest.read_bytes() == data
    assert hub.ranges(data) == [None, "bytes=250000-"]
    assert not (tmp_path / (artifact.dest + ".part")).exists()


def test_a_dropped_connection_is_resumed_within_one_run(hub, tmp_path):
    data = payload(400_000, seed=1)
    artifact = hub_file(hub, "multiband-diffusion/mbd_musicgen_32khz.th", data)
    hub.cuts[f"/cdn/{sha256(data)}"] = [100_000, 50_000]

    download(["model"], root=tmp_path, hub=hub.url, manifest=single(artifact), retry_wait=0, progress=False)

    assert (tmp_path / artifact.dest).read_bytes() == data
    assert hub.ranges(data) == [None, "bytes=100000-", "bytes=150000-"]


def test_a_corrupted_file_in_place_is_detected_and_fetched_again(hub, tmp_path):
    data = payload(300_000, seed=2)
    artifact = hub_file(hub, "musicgen-melody/compression_state_dict.bin", data)
    download(["model"], root=tmp_path, hub=hub.url, manifest=single(artifact), progress=False)
    dest = tmp_path / artifact.dest
    dest.write_bytes(data[:1000] + b"X" + data[1001:])  # same size, one byte changed

    [result] = download(["model"], root=tmp_path, hub=hub.url, manifest=single(artifact), progress=False)

    assert result.status == "downloaded" and dest.read_bytes() == data
    assert hub.ranges(data) == [None, None]


def test_corruption_of_a_file_without_published_checksum_is_caught_by_the_download_record(hub, tmp_path):
    data = b'{"d_model": 768}\n' * 50
    artifact = hub_file(hub, "huggingface/hub/models--t5-base/snapshots/x/config.json", data, publish=False)
    download(["model"], root=tmp_path, hub=hub.url, manifest=single(artifact), progress=False)
    dest = tmp_path / artifact.dest
    assert json.loads(layout.record_path(artifact.dest, tmp_path).read_text())["sha256"] == sha256(data)
    dest.write_bytes(data.replace(b"768", b"512"))

    [result] = download(["model"], root=tmp_path, hub=hub.url, manifest=single(artifact), progress=False)

    assert result.status == "downloaded" and dest.read_bytes() == data


def test_a_download_failing_verification_never_appears_under_its_name(hub, tmp_path):
    data = payload(200_000, seed=3)
    artifact = hub_file(hub, "musicgen-melody/state_dict.bin", data)
    hub.corrupt.add(f"/cdn/{sha256(data)}")

    with pytest.raises(DownloadError, match="musicgen-melody/state_dict.bin|failed verification"):
        download(
            ["model"], root=tmp_path, hub=hub.url, manifest=single(artifact), attempts=2, retry_wait=0, progress=False
        )

    assert not (tmp_path / artifact.dest).exists()
    assert not (tmp_path / (artifact.dest + ".part")).exists()
    assert hub.ranges(data) == [None, None]  # fetched again once, then given up


def test_a_404_names_the_file_and_the_repository(hub, tmp_path):
    artifact = Artifact(
        name="test LM",
        dest="musicgen-melody/state_dict.bin",
        repo_id="facebook/musicgen-nope",
        revision=REVISION,
        path="state_dict.bin",
        size=10,
    )
    with pytest.raises(DownloadError) as error:
        download(["model"], root=tmp_path, hub=hub.url, manifest=single(artifact), progress=False)
    message = str(error.value)
    assert "HTTP 404" in message and f"facebook/musicgen-nope@{REVISION} state_dict.bin" in message
    assert not list(tmp_path.rglob("*.part"))


def test_the_cli_reports_a_404_without_a_traceback(hub, tmp_path, capsys, monkeypatch):
    # the real manifest's encode-decode target is one hub file, which the empty stand-in lacks
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # the CLI's setting
    assert main(["download", "encode-decode", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    codec = MANIFEST.targets["encode-decode"][0]
    assert "\nerror: " in err and "Traceback" not in err
    assert "HTTP 404" in err and f"{codec.repo_id}@{codec.revision} {codec.path}" in err


# --- at load time ----------------------------------------------------------------------------


def test_missing_weights_fail_fast_naming_the_file_and_the_command(hub, tmp_path):
    from musicgen.models.load import load_models
    from musicgen.settings import Settings

    start = time.perf_counter()
    with pytest.raises(WeightsError) as error:
        store.ensure_weights(["melody", "large"], tmp_path)
    assert time.perf_counter() - start < 2
    message = str(error.value)
    assert f"{tmp_path / 'musicgen-large' / 'state_dict.bin'}: missing" in message
    assert str(layout.htdemucs_path(tmp_path)) in message
    assert f"python -m musicgen download melody large --root {tmp_path}" in message
    with pytest.raises(WeightsError, match="python -m musicgen download melody large") as loading:
        load_models(
            Settings(weights_root=tmp_path)
        )  # the loader runs this check first (and the server's setup, test_server.py)
    assert str(loading.value) == message
    assert hub.requests == []  # nothing touched the network


def test_a_truncated_download_is_reported_at_load(hub, tmp_path):
    data = payload(100_000, seed=4)
    artifact = hub_file(hub, "musicgen-large/state_dict.bin", data)
    download(["model"], root=tmp_path, hub=hub.url, manifest=single(artifact), progress=False)
    store.check_present(["model"], tmp_path, single(artifact))
    with open(tmp_path / artifact.dest, "r+b") as file:
        file.truncate(60_000)
    with pytest.raises(WeightsError, match="60000 bytes, but 100000 were downloaded and verified"):
        store.check_present(["model"], tmp_path, single(artifact))


def test_ensure_weights_downloads_only_when_the_operator_allows_it(hub, tmp_path):
    data = payload(50_000, seed=5)
    manifest = single(hub_file(hub, "musicgen-melody/compression_state_dict.bin", data))
    with pytest.raises(WeightsError, match="MUSICGEN_DOWNLOAD_ON_SETUP"):
        store.ensure_weights(["model"], tmp_path, manifest=manifest, hub=hub.url)
    assert hub.requests == []

    allowed = read_settings({"MUSICGEN_DOWNLOAD_ON_SETUP": "1", "HF_ENDPOINT": hub.url})
    store.ensure_weights(["model"], tmp_path, allowed.download_on_setup, manifest=manifest, hub=allowed.hub_endpoint)
    assert (tmp_path / "musicgen-melody" / "compression_state_dict.bin").read_bytes() == data
