"""The whole MusicGen family (small, medium, the stereo sizes) and the negative prompt, on the demo weights.

The family's channels, lengths, seeds and melody refusals are in test_model_versions.py (over every
version the table adds); here: every mode on each added size, and the negative prompt: what it
changes, what it leaves alone, and its tokens against audiocraft's own LM with the negative text in
place of the null condition.
"""

from __future__ import annotations

import audiocraft.models.lm
import numpy as np
import pytest
import soundfile
import torch
from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout
from helpers import predict_with_defaults, write_scale

from musicgen.audio.encode import read_metadata
from musicgen.errors import InputError
from musicgen.generate import seed_everything
from musicgen.tokens.loops import AudiocraftLoop, FastLoop
from musicgen.versions import GENERATING, PRELOADED

RATE = 32000
FAMILY = ("small", "medium", "stereo-small", "stereo-medium", "stereo-melody")
NEGATIVE = "drums, vocals"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("family-inputs")


def read(path):
    samples, rate = soundfile.read(str(path), always_2d=True)
    assert rate == RATE
    return samples  # [T, C]


def test_the_family_is_in_the_table():
    assert set(FAMILY) <= set(GENERATING) and not set(FAMILY) & set(PRELOADED)
    assert [GENERATING[name].stereo for name in FAMILY] == [False, False, True, True, True]
    assert [GENERATING[name].melody for name in FAMILY] == [False, False, False, False, True]


@pytest.mark.parametrize("version", FAMILY)
def test_every_mode_works_on_each_size(predictor, audio_dir, version):
    """A continuation (its prompt window re-decoded, then 2 s), past 30 s, MultiBand Diffusion and
    mp3, with the model's channels and the exact lengths."""
    channels = GENERATING[version].channels
    song = write_scale(audio_dir / "song.wav", 3.0)
    continued = read(
        predict_with_defaults(
            predictor, model_version=version, prompt="go on", input_audio=song, continuation=True, duration=2, seed=1
        )
    )
    assert continued.shape == (5 * RATE, channels)
    windowed = read(predict_with_defaults(predictor, model_version=version, prompt="calm", duration=32, seed=2))
    assert windowed.shape == (32 * RATE, channels)
    diffused = read(
        predict_with_defaults(
            predictor, model_version=version, prompt="calm", duration=1, seed=3, multi_band_diffusion=True
        )
    )
    assert diffused.shape == (RATE, channels) and np.abs(diffused).max() > 0.01
    mp3 = predict_with_defaults(
        predictor, model_version=version, prompt="calm", duration=1, seed=4, output_format="mp3"
    )
    assert mp3.suffix == ".mp3" and read_metadata(mp3)["model_version"] == version


# ---------------------------------------------------------------------------------------------
# The negative prompt


@pytest.mark.parametrize("version", ["melody", "large", "stereo-melody"])
def test_a_negative_prompt_changes_the_output_and_its_seed_replays_it(predictor, version):
    inputs = {"model_version": version, "prompt": "calm piano", "duration": 2, "seed": 21}
    plain = predict_with_defaults(predictor, **inputs).read_bytes()
    negative = predict_with_defaults(predictor, **inputs, negative_prompt=NEGATIVE)
    data = negative.read_bytes()
    assert data != plain
    assert read_metadata(negative)["negative_prompt"] == NEGATIVE  # the file says how it was made
    assert predict_with_defaults(predictor, **inputs, negative_prompt=NEGATIVE).read_bytes() == data
    other = predict_with_defaults(predictor, **inputs, negative_prompt="strings").read_bytes()
    assert other not in (data, plain)


def test_no_negative_prompt_or_an_empty_one_gives_todays_bytes(predictor, audio_dir):
    melody = write_scale(audio_dir / "tune.wav", 3.0)
    inputs = {"prompt": "jazz", "input_audio": melody, "duration": 2, "seed": 5}
    today = predict_with_defaults(predictor, **inputs)  # no negative_prompt given: as before it existed
    assert "negative_prompt" not in read_metadata(today)
    data = today.read_bytes()  # (the path is valid until the predictor's next prediction)
    for empty in ("", "   "):
        assert predict_with_defaults(predictor, **inputs, negative_prompt=empty).read_bytes() == data


class NegativeNullCondition(ClassifierFreeGuidanceDropout):
    """audiocraft's own dropout for guidance's null half, then the negative text in its description:
    what LMModel.generate conditions on when handed it (the reference, built from audiocraft's modules)."""

    def forward(self, samples):
        samples = super().forward(samples)
        for sample in samples:
            sample.text["description"] = NEGATIVE
        return samples


CASES = {
    # name: (model_version, generation params, seconds of melody)
    "text": ("large", {"duration": 2}, None),
    "melody": ("melody", {"duration": 2}, 3.0),
    "stereo-melody": ("stereo-melody", {"duration": 2}, 3.0),
    "past-30-s": ("small", {"duration": 33}, None),
    "cfg-1": ("medium", {"duration": 2, "cfg_coef": 1.0}, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_negative_tokens_are_audiocrafts_with_the_negative_text_as_the_null_condition(
    predictor, audio_dir, monkeypatch, case
):
    version, params, seconds = CASES[case]
    model = predictor.runner.service.models.get(version).model
    model.set_generation_params(extend_stride=18, **params)
    melody = None
    if seconds:
        wav, _ = soundfile.read(str(write_scale(audio_dir / "m.wav", seconds, rate=RATE)), always_2d=True)
        melody = torch.from_numpy(wav.T.astype(np.float32))

    def conditions():
        with torch.inference_mode():
            return model._prepare_tokens_and_attributes(
                ["calm piano"], None, melody_wavs=None if melody is None else [melody]
            )

    seed_everything(9)
    attributes, prompt = conditions()
    with torch.inference_mode():
        ours = FastLoop(model).tokens(attributes, prompt, NEGATIVE)
        seed_everything(9)
        plain = FastLoop(model).tokens(*conditions())
    with monkeypatch.context() as patched:
        patched.setattr(audiocraft.models.lm, "ClassifierFreeGuidanceDropout", NegativeNullCondition)
        seed_everything(9)
        with torch.inference_mode():
            reference = model._generate_tokens(*conditions())
    assert ours.shape == reference.shape == (1, 8 if GENERATING[version].stereo else 4, int(params["duration"] * 50))
    assert torch.equal(ours, reference)
    assert not torch.equal(ours, plain)  # the negative text reached the null half


def test_audiocrafts_loop_refuses_a_negative_prompt_naming_the_setting(predictor):
    models = predictor.runner.service.models
    with pytest.raises(InputError, match="MUSICGEN_TOKEN_LOOP=audiocraft"):
        AudiocraftLoop(models.get("large").model).tokens([], None, NEGATIVE)
    models.loop_choice = "audiocraft"
    try:
        with pytest.raises(InputError) as refused:
            predict_with_defaults(predictor, prompt="calm", duration=1, seed=1, negative_prompt=NEGATIVE)
    finally:
        models.loop_choice = "musicgen"
    assert str(refused.value).startswith("negative_prompt needs this service's own token loop")
    assert "MUSICGEN_TOKEN_LOOP=audiocraft" in str(refused.value)
