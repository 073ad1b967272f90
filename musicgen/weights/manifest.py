"""Every checkpoint file the service can need: where it comes from, where it goes, how to verify it.

One entry per file. Destinations are built from the layout constants in musicgen.weights, so the
manifest, the presence checks and the loaders cannot drift apart. Sizes and SHA-256 sums are the
values the source publishes (for Hugging Face LFS files: the pointer's `oid sha256:` and `size`);
None means the source publishes none, and the downloader then checks what it can and records the
SHA-256 it computed (see musicgen.weights.download) so later runs still detect corruption.

Where each value was read (November 2026, from the hub's public pages):
- facebook/musicgen-melody @ 53d5f640: tree page lists both files; state_dict.bin blob page
  (sha256 4dda87e5...) and a duplicate's LFS pointer (size 2771415924); compression_state_dict.bin
  from commit fee00967 "Upload compression_state_dict.bin" (pointer: sha256 37d256b5..., 236001935).
- facebook/musicgen-large @ c19300a6: tree page lists both files; LFS pointers (sha256 + size) from
  a byte-for-byte mirror commit (audo/MusicGen 1516f729) and duplicates' blob pages; the codec
  pointer is identical to melody's.
- google-t5/t5-base @ fe6d9bf2 ("Adding `safetensors` variant", the commit that added
  model.safetensors): model.safetensors sha256 from its blob page; its exact byte size, and every
  value of the two small non-LFS files (config.json, tokenizer.json), are not published: None.
- facebook/multiband-diffusion @ aaf67058 ("Upload mbd_musicgen_32khz.th"): pointer in the commit
  diff (sha256 2df3fff4..., 1647495659).
- facebook/musicgen-melody-large @ 6fdf8d3d, -stereo-large @ bda8ec33, -stereo-melody-large @
  eea14861, and musicgen-small @ 4c8334b0, -medium @ d3bd7b00, -stereo-small @ 3a110c00,
  -stereo-medium @ 2747e613, -stereo-melody @ 022c3bd2: revisions from a third party's pinned
  model table (a public repository's MUSICGEN_MODELS; melody-large's also from a user's hub-cache
  snapshot path); not checked against the hub, which is unreachable from here. The stereo
  repositories' compression_state_dict.bin is audiocraft's export_pretrained_compression_model
  pointer {'pretrained': 'facebook/encodec_32khz', ...} (audiocraft issue 459 for the 3.3 B ones;
  replicate/cog-musicgen fetches models--facebook--encodec_32khz beside them; assumed the same for
  the stereo small, medium and melody released with them), so each needs that EnCodec too.
  musicgen-small and -medium ship the EnCodec file itself (medium's LFS pointer is the shared
  one, CODEC_SHA256; small's was not found). No size or sha256 of any of these LMs was found:
  None (the downloader records what it computed).
- facebook/encodec_32khz: no revision was found published anywhere readable from here, so it is
  the one unpinned entry (revision "main", UNPINNED_REPOS); config.json + model.safetensors are
  what transformers' EncodecModel.from_pretrained reads offline.
- htdemucs: demucs 4.1's remote/files.txt + pretrained.ROOT_URL give the URL; torch hub's
  convention puts a SHA-256 prefix in the file name (955717e8-8726e21a.th -> "8726e21a"), which is
  all that is published (no full digest, no size).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from musicgen.versions import ENCODE_DECODE, GENERATING, MODEL_VERSIONS, ModelVersion
from musicgen.weights import layout

HF_ENDPOINT = "https://huggingface.co"  # overridden by $HF_ENDPOINT, as huggingface_hub does


@dataclass(frozen=True)
class Artifact:
    """One file: its source, its place under the weights root, and what verifies it."""

    name: str  # short label for progress bars and errors, e.g. "musicgen-melody LM"
    dest: str  # POSIX path relative to the weights root, exactly where the loader reads it
    repo_id: str | None = None  # Hugging Face repo; None for a plain URL
    revision: str | None = None  # pinned 40-hex commit of repo_id
    path: str | None = None  # the file's path inside repo_id
    url: str | None = None  # full URL, for files not on the hub
    size: int | None = None  # bytes, as the source publishes; None = unpublished
    sha256: str | None = None  # hex digest, as the source publishes; None = unpublished
    sha256_prefix: str | None = None  # torch hub's file-name convention: leading hex of the digest
    approx_size: int | None = None  # the hub page's rounded size, for --help only; never verified
    hub_ref: str | None = None  # Hugging Face cache `refs/main` (relative to the root) to point at revision

    def source_url(self, endpoint: str | None = None) -> str:
        """Where to GET the file: the hub's resolve endpoint for a pinned revision, or the URL."""
        if self.url:
            return self.url
        base = (endpoint or HF_ENDPOINT).rstrip("/")
        return f"{base}/{self.repo_id}/resolve/{self.revision}/{self.path}"

    @property
    def source(self) -> str:
        """The source in words, for error messages."""
        if self.url:
            return self.url
        return f"{self.repo_id}@{self.revision} {self.path}"

    @property
    def display_size(self) -> int | None:
        return self.size if self.size is not None else self.approx_size


@dataclass(frozen=True)
class Manifest:
    """Download targets (model versions and `mbd`) and the files each one needs."""

    targets: Mapping[str, tuple[Artifact, ...]]
    descriptions: Mapping[str, str] = field(default_factory=dict)

    def artifacts(self, names: Iterable[str] | None = None) -> list[Artifact]:
        """The files the named targets need (all targets when None), each file once, in order."""
        names = list(self.targets) if names is None else list(names)
        unknown = [name for name in names if name not in self.targets]
        if unknown:
            raise KeyError(f"unknown download target(s) {unknown}; the targets are: {', '.join(self.targets)}")
        unique: dict[str, Artifact] = {}
        for name in names:
            for artifact in self.targets[name]:
                unique.setdefault(artifact.dest, artifact)
        return list(unique.values())

    def size_summary(self, name: str) -> str:
        """'3.90 GB' or '3.90 GB + 1 file of unpublished size', for --help."""
        files = self.targets[name]
        total = sum(f.display_size for f in files if f.display_size is not None)
        unknown = sum(1 for f in files if f.display_size is None)
        text = f"{total / 1e9:.2f} GB"
        if any(f.size is None and f.approx_size is not None for f in files):
            text = "about " + text
        if unknown:
            text += f" + {unknown} file{'s' if unknown > 1 else ''} of unpublished size"
        return text


def _root_relative(path) -> str:
    """A layout path from musicgen.weights, relative to the root, in POSIX form."""
    return PurePosixPath(*path.relative_to(_LAYOUT_ROOT).parts).as_posix()


# The layout functions of musicgen.weights, evaluated on a placeholder root, give the destinations.
_LAYOUT_ROOT = Path("/<root>")

T5_REPO = "google-t5/t5-base"  # the hub's canonical id of `t5-base`, the name audiocraft loads
T5_REVISION = "fe6d9bf207cd3337512ca838a8b453f87a9178ef"
MBD_REPO = "facebook/multiband-diffusion"
MBD_REVISION = "aaf67058af16d7f889cc2f24ef74c2d174ce051f"
ENCODEC_HF_REVISION = "main"  # no commit id published where we could read it (see above)
UNPINNED_REPOS = (layout.ENCODEC_HF_NAME,)
HTDEMUCS_URL = f"https://dl.fbaipublicfiles.com/demucs/hybrid_transformer/{layout.HTDEMUCS_FILE}"

# The 32 kHz EnCodec: one file, byte-identical in musicgen-medium, -melody and -large (the same LFS
# sha256 and size in each repo, and in musicgen-style/-stem), so every target that needs "the codec"
# uses melody's copy. musicgen-small's pointer was not found; its 236 MB file is, per audiocraft, the
# same 32 kHz EnCodec every MusicGen model is trained over.
CODEC_SHA256 = "37d256b525d4117f8bbf790ab448a8e9f4746cd401900fe1ae72e154b1513a30"
CODEC_SIZE = 236001935


def _musicgen_file(
    version: ModelVersion, filename: str, size: int | None = None, sha256: str | None = None
) -> Artifact:
    """One file of a released MusicGen repository, placed in `version`'s model folder."""
    kind = "LM" if filename == layout.LM_FILE else "EnCodec"
    return Artifact(
        name=f"{version.folder} {kind}",
        dest=_root_relative(layout.model_dir(version.name, _LAYOUT_ROOT) / filename),
        repo_id=version.repo,
        revision=version.revision,
        path=filename,
        size=size,
        sha256=sha256,
    )


# T5: the files transformers 5 reads offline for T5Tokenizer / T5EncoderModel.from_pretrained("t5-base")
# (measured: config.json, model.safetensors, tokenizer.json; spiece.model, tokenizer_config.json and
# generation_config.json are looked up but optional), in the Hugging Face cache layout.
_T5_CACHE = layout.hf_home(_LAYOUT_ROOT) / "hub" / f"models--{layout.T5_NAME}"
T5_REF = _root_relative(_T5_CACHE / "refs" / "main")


def _t5_file(path: str, name: str, sha256: str | None = None, approx_size: int | None = None) -> Artifact:
    return Artifact(
        name=name,
        dest=_root_relative(_T5_CACHE / "snapshots" / T5_REVISION / path),
        repo_id=T5_REPO,
        revision=T5_REVISION,
        path=path,
        sha256=sha256,
        approx_size=approx_size,
        hub_ref=T5_REF,
    )


T5_CONFIG = _t5_file("config.json", "T5-base config", approx_size=1_210)
T5_WEIGHTS = _t5_file(
    "model.safetensors",
    "T5-base encoder weights",
    sha256="a90903540cc02cbeb7ff9f823f1a80eb778c7e22426a0e620b01c77a5ec8f5b4",
    approx_size=892_000_000,
)
T5_TOKENIZER = _t5_file("tokenizer.json", "T5-base tokenizer", approx_size=1_390_000)
T5_FILES = (T5_CONFIG, T5_WEIGHTS, T5_TOKENIZER)

# The EnCodec those pointers name, in the Hugging Face cache layout (transformers' EncodecModel).
_ENCODEC_HF_CACHE = layout.hf_home(_LAYOUT_ROOT) / "hub" / f"models--{layout.ENCODEC_HF_NAME.replace('/', '--')}"
ENCODEC_HF_REF = _root_relative(_ENCODEC_HF_CACHE / "refs" / "main")
ENCODEC_HF_FILES = tuple(
    Artifact(
        name=f"EnCodec 32 kHz (transformers) {path}",
        dest=_root_relative(_ENCODEC_HF_CACHE / "snapshots" / ENCODEC_HF_REVISION / path),
        repo_id=layout.ENCODEC_HF_NAME,
        revision=ENCODEC_HF_REVISION,
        path=path,
        hub_ref=ENCODEC_HF_REF,
    )
    for path in ("config.json", "model.safetensors")
)

HTDEMUCS = Artifact(
    name="HT-Demucs (melody stems)",
    dest=_root_relative(layout.htdemucs_path(_LAYOUT_ROOT)),
    url=HTDEMUCS_URL,
    sha256_prefix=layout.HTDEMUCS_FILE.rsplit("-", 1)[1].split(".")[0],  # "8726e21a"
)

# MultiBand Diffusion for MusicGen. audiocraft's get_mbd_musicgen() pairs it with
# facebook/musicgen-small's compression_state_dict.bin, the 32 kHz EnCodec every MusicGen model
# shares (see CODEC_SHA256), so the mbd target reuses musicgen-melody/compression_state_dict.bin.
MBD = Artifact(
    name="MultiBand Diffusion",
    dest=_root_relative(layout.mbd_path(_LAYOUT_ROOT)),
    repo_id=MBD_REPO,
    revision=MBD_REVISION,
    path=layout.MBD_FILE,
    size=1647495659,
    sha256="2df3fff4035c7e3be1e6b3b1dc3268a79d03238b17877e29a1dd62e4407f022c",
)


def _version_files(version: ModelVersion) -> tuple[Artifact, ...]:
    """What `version` loads: its LM, its EnCodec (the file, or the pointer and the Hugging Face
    EnCodec it names), T5-base, and HT-Demucs for a melody model."""
    lm = _musicgen_file(version, layout.LM_FILE, version.lm_size, version.lm_sha256)
    if version.ships_codec and version.codec_published:
        codec = (_musicgen_file(version, layout.CODEC_FILE, CODEC_SIZE, CODEC_SHA256),)
    elif version.ships_codec:
        codec = (_musicgen_file(version, layout.CODEC_FILE),)
    else:
        codec = (_musicgen_file(version, layout.CODEC_FILE), *ENCODEC_HF_FILES)
    return (lm, *codec, *T5_FILES, *((HTDEMUCS,) if version.melody else ()))


def _version_description(version: ModelVersion) -> str:
    """`download --help`'s line for a version, e.g. 'facebook/musicgen-melody (1.5 B, text + melody) + T5-base + HT-Demucs'."""
    traits = ", ".join(
        [
            version.parameters,
            *(["stereo"] if version.stereo else []),
            version.conditioning if version.melody else "text only",
        ]
    )
    extras = ["T5-base", *(["HT-Demucs"] if version.melody else [])]
    if not version.ships_codec:
        extras.insert(0, "its EnCodec")
    return f"{version.repo} ({traits}) + " + " + ".join(extras)


VERSION_FILES = {name: _version_files(version) for name, version in GENERATING.items()}
MELODY_CODEC = VERSION_FILES["melody"][1]  # the EnCodec file encode-decode and MultiBand Diffusion load

MANIFEST = Manifest(
    # every model_version in predict.py's order, then MultiBand Diffusion
    targets={**{name: VERSION_FILES.get(name, (MELODY_CODEC,)) for name in MODEL_VERSIONS}, "mbd": (MBD, MELODY_CODEC)},
    descriptions={
        **{name: _version_description(version) for name, version in GENERATING.items()},
        ENCODE_DECODE: "the 32 kHz EnCodec alone (musicgen-melody's)",
        "mbd": "MultiBand Diffusion decoder + the 32 kHz EnCodec",
    },
)
