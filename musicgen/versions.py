"""The model versions this service serves, declared once: what each one is, as plain data (imports nothing).

`VERSIONS` is the one table. Everything else derives from it: predict.py's and train.py's
`model_version` choices (literal there, tied to MODEL_VERSIONS by tests/test_model_versions.py),
the weights folders (musicgen.weights.layout), the download targets (musicgen.weights.manifest),
the demo checkpoints (musicgen.demo), the training choices and the tests. Whether a version
is stereo or takes a melody is fixed by its released checkpoint (and checked against a fine-tune
that replaces it), so request validation can say it before anything is loaded. Adding a version:
docs/architecture.md, "A new model version".
"""

from __future__ import annotations

from dataclasses import dataclass

ENCODE_DECODE = "encode-decode"  # no LM: input_audio through the 32 kHz EnCodec and back


@dataclass(frozen=True)
class ModelVersion:
    """One generating model_version and the release it serves."""

    name: str  # the model_version value
    repo: str  # its Hugging Face repository
    revision: str  # the pinned 40-hex commit of `repo` the download fetches
    parameters: str  # the LM's size, in words
    stereo: bool  # two channels: 8 interleaved codebooks over the mono 32 kHz EnCodec
    melody: bool  # conditioned on the chroma of input_audio (besides the text)
    # True: the repository ships the 32 kHz EnCodec file itself; False: a pointer to the Hugging
    # Face EnCodec (facebook/encodec_32khz), which the download then fetches too.
    ships_codec: bool
    # Whether that file's LFS size and sha256 are published (the one shared by musicgen-medium,
    # -melody and -large); False: the downloader records the sha256 it computes.
    codec_published: bool = True
    lm_size: int | None = None  # bytes of state_dict.bin as the hub publishes them; None: unpublished
    lm_sha256: str | None = None  # its SHA-256 as the hub publishes it; None: unpublished

    @property
    def channels(self) -> int:
        return 2 if self.stereo else 1

    @property
    def folder(self) -> str:
        """Its folder under the weights root."""
        return f"musicgen-{self.name}"

    @property
    def conditioning(self) -> str:
        return "text + melody" if self.melody else "text"


VERSIONS = (
    ModelVersion(
        "melody",
        "facebook/musicgen-melody",
        "53d5f6400fc8aec99b9bbbf0589493a8073c51fe",
        "1.5 B",
        stereo=False,
        melody=True,
        ships_codec=True,
        lm_size=2771415924,
        lm_sha256="4dda87e5dfafc1b59351131d9610002b06fbecc50793a0e3c8ab2e534176cd7f",
    ),
    ModelVersion(
        "large",
        "facebook/musicgen-large",
        "c19300a6b2b62d29b345ae9eb7b163278e65238a",
        "3.3 B",
        stereo=False,
        melody=False,
        ships_codec=True,
        lm_size=6514108999,
        lm_sha256="1f0cf17b5e65c5dd8ba71767371c377f174e4ce1db44bc4d6657825769f26ffd",
    ),
    ModelVersion(
        "melody-large",
        "facebook/musicgen-melody-large",
        "6fdf8d3d815995108c9bdb5183414ff464b171ac",
        "3.3 B",
        stereo=False,
        melody=True,
        ships_codec=False,
    ),
    ModelVersion(
        "stereo-large",
        "facebook/musicgen-stereo-large",
        "bda8ec330c9c17e09728589eaf678f58f7d2d932",
        "3.3 B",
        stereo=True,
        melody=False,
        ships_codec=False,
    ),
    ModelVersion(
        "stereo-melody-large",
        "facebook/musicgen-stereo-melody-large",
        "eea14861e6c29c47aea1055982a217468cd1634d",
        "3.3 B",
        stereo=True,
        melody=True,
        ships_codec=False,
    ),
    ModelVersion(
        "small",
        "facebook/musicgen-small",
        "4c8334b02c6ec4e8664a91979669a501ec497792",
        "300 M",
        stereo=False,
        melody=False,
        ships_codec=True,
        codec_published=False,
    ),
    ModelVersion(
        "medium",
        "facebook/musicgen-medium",
        "d3bd7b00761b78ad7a8a05145ee31e7832e9916c",
        "1.5 B",
        stereo=False,
        melody=False,
        ships_codec=True,
    ),
    ModelVersion(
        "stereo-small",
        "facebook/musicgen-stereo-small",
        "3a110c0092820d470372c880c5ea06ce21a78ddd",
        "300 M",
        stereo=True,
        melody=False,
        ships_codec=False,
    ),
    ModelVersion(
        "stereo-medium",
        "facebook/musicgen-stereo-medium",
        "2747e613fbaadc43b14257224326ef58c5c11b81",
        "1.5 B",
        stereo=True,
        melody=False,
        ships_codec=False,
    ),
    ModelVersion(
        "stereo-melody",
        "facebook/musicgen-stereo-melody",
        "022c3bd20a7d77e7c014082f0391bcbcd3940a7a",
        "1.5 B",
        stereo=True,
        melody=True,
        ships_codec=False,
    ),
)
GENERATING = {version.name: version for version in VERSIONS}
PUBLISHED = ("melody", "large", ENCODE_DECODE)  # the published schemas' model_version choices, in order
# The choices of predict.py's and train.py's model_version, in their order: the published three,
# then every other version of the table in its order.
MODEL_VERSIONS = (*PUBLISHED, *(name for name in GENERATING if name not in PUBLISHED))
PRELOADED = ("melody", "large")  # setup() loads these unless MUSICGEN_MODEL_VERSIONS names others


def markdown_table() -> str:
    """The README's table of the model versions (tooling.readme writes it; a test keeps them equal)."""
    rows = ["| `model_version` | model | size | channels | conditioning | loaded |", "|---|---|---|---|---|---|"]
    for name in MODEL_VERSIONS:
        if name == ENCODE_DECODE:
            rows.append(f"| `{name}` | the 32 kHz EnCodec alone | – | the input's | – | at setup |")
            continue
        version = GENERATING[name]
        channels = "stereo" if version.stereo else "mono"
        loaded = "at setup" if name in PRELOADED else "on first request"
        rows.append(
            f"| `{name}` | [{version.repo}](https://huggingface.co/{version.repo}) | {version.parameters} | {channels} | "
            f"{version.conditioning} | {loaded} |"
        )
    return "\n".join(rows)
