"""The model versions this service serves: what each one is, as plain data (imports nothing).

`model_version` takes the published three (melody, large, encode-decode) and, after them, the
models Replicate's meta/musicgen also serves. Whether a version is stereo or takes a melody is
fixed by its released checkpoint (and checked against a fine-tune that replaces it), so request
validation can say it before anything is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

ENCODE_DECODE = "encode-decode"  # no LM: input_audio through the 32 kHz EnCodec and back


@dataclass(frozen=True)
class ModelVersion:
    """One generating model_version."""

    name: str  # the model_version value
    repo: str  # its Hugging Face repository
    parameters: str  # the LM's size, in words
    stereo: bool  # two channels: 8 interleaved codebooks over the mono 32 kHz EnCodec
    melody: bool  # conditioned on the chroma of input_audio (besides the text)

    @property
    def channels(self) -> int:
        return 2 if self.stereo else 1


GENERATING = {
    version.name: version
    for version in (
        ModelVersion("melody", "facebook/musicgen-melody", "1.5 B", stereo=False, melody=True),
        ModelVersion("large", "facebook/musicgen-large", "3.3 B", stereo=False, melody=False),
        ModelVersion("melody-large", "facebook/musicgen-melody-large", "3.3 B", stereo=False, melody=True),
        ModelVersion("stereo-large", "facebook/musicgen-stereo-large", "3.3 B", stereo=True, melody=False),
        ModelVersion("stereo-melody-large", "facebook/musicgen-stereo-melody-large", "3.3 B", stereo=True, melody=True),
    )
}
# The choices of predict.py's model_version, in its order: the published three first.
MODEL_VERSIONS = ("melody", "large", ENCODE_DECODE, "melody-large", "stereo-large", "stereo-melody-large")
PRELOADED = ("melody", "large")  # setup() loads these unless $MUSICGEN_MODEL_VERSIONS names others
