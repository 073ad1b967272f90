"""The models beyond melody and large (melody-large, stereo-large, stereo-melody-large) through the
Predictor on the demo weights, and the memory budget that loads and evicts them.

Token-exactness of our loop on them against audiocraft's own is in test_tokens.py.
"""

from __future__ import annotations

import logging
import re

import av
import numpy as np
import pytest
import soundfile
import torch
from helpers import predict_with_defaults, write_scale

from musicgen.errors import CapacityError, InputError
from musicgen.generate import diffusion_audio, seed_everything, set_generation_params
from musicgen.models.load import load_models
from musicgen.request import Request
from musicgen.serving.service import MusicGenService
from musicgen.settings import REPOSITORY, read_settings
from musicgen.versions import GENERATING, MODEL_VERSIONS, PRELOADED, PUBLISHED
from musicgen.weights import layout, manifest

RATE = 32000
FRAME = 640
NEW_VERSIONS = tuple(name for name in GENERATING if name not in PRELOADED)  # loaded on first request

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def read(path):
    samples, rate = soundfile.read(str(path), always_2d=True)
    assert rate == RATE
    return samples  # [T, C]


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("version-inputs")


def test_every_model_version_is_declared_once_in_the_table_and_the_rest_derives_from_it():
    from musicgen.demo.configs import lm_config
    from tooling.schema.inputs import PREDICT, TRAIN, read_inputs

    # predict.py's and train.py's literal choices (as Cog reads them) are the table's versions, published ones first
    for path, target, mode in (("predict.py", "Predictor", PREDICT), ("train.py", "train", TRAIN)):
        fields, _ = read_inputs((REPOSITORY / path).read_text(), target, mode)
        [model_version] = [field for field in fields if field.name == "model_version"]
        assert model_version.keywords["choices"] == list(MODEL_VERSIONS), path
    assert MODEL_VERSIONS[: len(PUBLISHED)] == PUBLISHED
    for name, version in GENERATING.items():
        assert layout.model_dir(name, REPOSITORY).name == version.folder == layout.MODEL_DIRS[name]
        files = manifest.MANIFEST.targets[name]
        assert files[0].repo_id == version.repo and files[0].revision == version.revision
        assert (manifest.HTDEMUCS in files) == version.melody
        assert any(artifact.repo_id == layout.ENCODEC_HF_NAME for artifact in files) != version.ships_codec
        config = lm_config(name)
        assert config["channels"] == version.channels and ("self_wav" in config["conditioners"]) == version.melody


@pytest.mark.parametrize("version", NEW_VERSIONS)
def test_text_output_has_the_models_channels_exact_length_and_replays_from_its_seed(predictor, version):
    first = predict_with_defaults(predictor, model_version=version, prompt="calm piano", duration=2, seed=11)
    data = first.read_bytes()
    samples = read(first)
    assert samples.shape == (2 * RATE, GENERATING[version].channels)
    if GENERATING[version].stereo:
        assert np.abs(samples[:, 0] - samples[:, 1]).max() > 0.01  # two channels, not one copied
    again = predict_with_defaults(predictor, model_version=version, prompt="calm piano", duration=2, seed=11)
    assert again.read_bytes() == data
    other = predict_with_defaults(predictor, model_version=version, prompt="calm piano", duration=2, seed=12)
    assert other.read_bytes() != data


def test_each_new_version_is_its_own_model(predictor):
    outputs = {
        version: predict_with_defaults(predictor, model_version=version, prompt="jazz", duration=1, seed=3).read_bytes()
        for version in ("melody", "large", *NEW_VERSIONS)
    }
    assert len(set(outputs.values())) == len(outputs)


@pytest.mark.parametrize("version", [name for name in NEW_VERSIONS if GENERATING[name].melody])
def test_the_melody_conditions_the_result(predictor, audio_dir, version):
    rising = write_scale(audio_dir / "rising.wav", 4.0)
    falling = write_scale(audio_dir / "falling.wav", 4.0, rising=False)
    outputs = [
        read(
            predict_with_defaults(
                predictor, model_version=version, prompt="jazz", input_audio=melody, duration=2, seed=5
            )
        )
        for melody in (rising, falling)
    ]
    assert outputs[0].shape == outputs[1].shape == (2 * RATE, GENERATING[version].channels)
    assert not np.array_equal(outputs[0], outputs[1])


@pytest.mark.parametrize("prompt_channels", [1, 2])
def test_stereo_continuation_from_a_mono_or_stereo_prompt(predictor, audio_dir, prompt_channels):
    """A mono prompt is duplicated to both channels, a stereo one kept: the re-decoded prompt is
    then identical in left and right, or differs as the input's channels do."""
    path = write_scale(
        audio_dir / f"prompt-{prompt_channels}.wav", 2.0, rate=RATE, channels=prompt_channels, channel_gain_step=0.5
    )
    out = predict_with_defaults(
        predictor, model_version="stereo-large", prompt="go on", input_audio=path, continuation=True, duration=2, seed=8
    )
    samples = read(out)
    assert samples.shape == (2 * RATE + 2 * RATE, 2)  # the 2 s prompt window (whole frames) + 2 s new
    head = samples[: RATE // 2]  # well inside the prompt: the decoder's context is the prompt's own tokens
    if prompt_channels == 1:
        assert np.array_equal(head[:, 0], head[:, 1])
    else:
        assert np.abs(head[:, 0] - head[:, 1]).max() > 0.01
    assert np.abs(samples[-RATE:, 0] - samples[-RATE:, 1]).max() > 0.01  # the new audio is stereo


def test_stereo_past_30_s_is_windowed_to_the_exact_length(predictor):
    samples = read(predict_with_defaults(predictor, model_version="stereo-large", prompt="calm", duration=35, seed=2))
    assert samples.shape == (35 * RATE, 2)


def test_multiband_diffusion_decodes_each_stereo_channel(predictor):
    plain = read(predict_with_defaults(predictor, model_version="stereo-large", prompt="calm", duration=2, seed=9))
    diffused = read(
        predict_with_defaults(
            predictor, model_version="stereo-large", prompt="calm", duration=2, seed=9, multi_band_diffusion=True
        )
    )
    assert diffused.shape == plain.shape == (2 * RATE, 2)
    assert np.abs(diffused[:, 0] - diffused[:, 1]).max() > 0.01
    assert not np.allclose(diffused, plain, atol=1e-3)


def test_multiband_diffusion_of_stereo_tokens_is_mbd_of_each_stream(predictor):
    """The decode itself: left and right codebooks split apart, each decoded by MBD on its own."""
    models = predictor.runner.service.models
    model = models.get("stereo-large").model
    request = Request(model_version="stereo-large", prompt="calm", duration=1)
    seed_everything(4)
    with torch.inference_mode():
        set_generation_params(model, request, 1)
        attributes, prompt = model._prepare_tokens_and_attributes(["calm"], None)
        codes = models.get("stereo-large").loop.tokens(attributes, prompt)
        left, right = model.compression_model.get_left_right_codes(codes)
        assert codes.shape == (1, 8, RATE // FRAME) and left.shape == right.shape == (1, 4, RATE // FRAME)
        assert torch.equal(codes[:, 0::2], left) and torch.equal(codes[:, 1::2], right)
        seed_everything(5)
        stereo = diffusion_audio(models, model, codes)
        seed_everything(5)
        alone = models.mbd.tokens_to_wav(left)[0]
    assert stereo.shape == (2, RATE)
    assert torch.equal(stereo[:1], alone)
    assert not torch.equal(stereo[0], stereo[1])


def test_stereo_mp3_has_two_channels(predictor):
    path = predict_with_defaults(
        predictor, model_version="stereo-melody-large", prompt="calm", duration=2, seed=6, output_format="mp3"
    )
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert (stream.sample_rate, stream.channels) == (RATE, 2)
        frames = sum(frame.samples for frame in container.decode(stream))
    assert frames == 2 * RATE


@pytest.mark.parametrize("strategy", ["loudness", "clip", "peak", "rms"])
def test_every_normalization_works_on_stereo(predictor, strategy):
    samples = read(
        predict_with_defaults(
            predictor, model_version="stereo-large", prompt="calm", duration=2, seed=6, normalization_strategy=strategy
        )
    )
    assert samples.shape == (2 * RATE, 2)
    peak = np.abs(samples).max()
    assert 0.05 < peak <= 1.0
    if strategy == "peak":  # audiocraft's peak: the loudest sample of both channels at -1 dBFS
        assert peak == pytest.approx(10 ** (-1 / 20), abs=2**-14)


@pytest.mark.parametrize("version", [name for name in NEW_VERSIONS if not GENERATING[name].melody])
def test_models_without_melody_conditioning_refuse_a_melody_naming_those_that_take_one(predictor, audio_dir, version):
    path = write_scale(audio_dir / "tune.wav", 2.0)
    takes_one = ", ".join(repr(name) for name, entry in GENERATING.items() if entry.melody)
    with pytest.raises(InputError) as refused:
        predict_with_defaults(predictor, model_version=version, prompt="x", input_audio=path, duration=1)
    assert f"model_version={version!r} has no melody conditioning" in str(refused.value)
    assert f"({takes_one})" in str(refused.value)


# ---------------------------------------------------------------------------------------------
# The memory budget


def _one_model_budget(settings):
    """A budget holding the preloaded melody, the shared modules and one more demo LM, not two."""
    probe = load_models(settings, ("melody",))
    resident = probe.resident_bytes()
    probe.get("stereo-large")
    stereo = probe.resident_bytes() - resident  # the stereo LM and the EnCodec it points to
    probe.get("melody-large")
    both = probe.resident_bytes() - resident
    limit = resident + stereo + (both - stereo) // 2  # room for either one, not for both
    assert resident + stereo < limit < resident + both
    return limit


def test_a_budget_for_one_model_loads_and_evicts_on_alternate_requests(settings, caplog, predictor):
    limit = _one_model_budget(settings)
    budget = read_settings({"MUSICGEN_MODEL_VERSIONS": "melody", "MUSICGEN_GPU_MEMORY_GB": f"{limit / 1e9:.9f}"})
    service = MusicGenService.load(
        settings.replace(model_versions=budget.model_versions, memory_budget_gb=budget.memory_budget_gb)
    )
    assert service.models.preloaded == ("melody",)
    expected = {
        version: predict_with_defaults(
            predictor, model_version=version, prompt="calm", duration=1, seed=21
        ).read_bytes()
        for version in ("stereo-large", "melody-large")
    }
    caplog.set_level(logging.INFO, logger="musicgen.models.load")
    for turn, version in enumerate(("stereo-large", "melody-large", "stereo-large", "melody-large")):
        caplog.clear()
        request = Request(model_version=version, prompt="calm", duration=1, seed=21)
        assert service.predict(request).path.read_bytes() == expected[version]
        assert set(service.models.models) == {"melody", version}
        assert service.models.resident_bytes() <= limit
        assert re.search(rf"loaded {version} on cpu in [0-9.]+ s \({version} [0-9.]+ MB\)", caplog.text)
        other = "melody-large" if version == "stereo-large" else "stereo-large"
        evicted = re.search(rf"evicted {other} \([0-9.]+ MB\) in [0-9.]+ s", caplog.text)
        assert bool(evicted) == (turn > 0), caplog.text
    # a resident model is used again without loading
    caplog.clear()
    service.predict(Request(model_version="melody-large", prompt="calm", duration=1, seed=21))
    assert "loaded melody-large" not in caplog.text and "evicted" not in caplog.text
    # the preloaded model stays
    service.predict(Request(model_version="melody", prompt="calm", duration=1, seed=21))
    assert "melody" in service.models.models


def test_a_model_that_cannot_fit_gets_a_clear_error(settings):
    # 1 kB: not even the preloaded model fits
    service = MusicGenService.load(settings.replace(model_versions=("melody",), memory_budget_gb=0.000001))
    with pytest.raises(CapacityError) as error:
        service.predict(Request(model_version="stereo-large", prompt="calm", duration=1, seed=1))
    message = str(error.value)
    # in units that show the numbers (the demo models are megabytes, the budget a kilobyte)
    assert re.match(r"model_version='stereo-large' needs [0-9.]+ MB and cannot be loaded", message), message
    assert "the memory budget is 1.0 kB (MUSICGEN_GPU_MEMORY_GB=1e-06)" in message
    assert re.search(r"the shared modules hold [0-9.]+ MB of it", message), message
    assert "stereo-large" not in service.models.models
    # the service still answers what is resident
    assert service.predict(Request(model_version="melody", prompt="calm", duration=1, seed=1)).path.is_file()


def test_versions_without_weights_are_not_served(demo_weights, settings):
    """With stereo-large's folder gone, setup serves the rest; a request for it is refused before
    any model work, naming what is served."""
    folder = demo_weights / "musicgen-stereo-large"
    hidden = folder.rename(folder.with_name("hidden-stereo-large"))
    try:
        models = load_models(settings, ("melody",))
    finally:
        hidden.rename(folder)
    assert set(models.servable) == set(GENERATING) - {"stereo-large"}
    with pytest.raises(Exception, match=r"model_version='stereo-large' is not loaded by this deployment; it serves"):
        MusicGenService(models).predict(Request(model_version="stereo-large", prompt="calm", duration=1))
    assert set(models.models) == {"melody"}


def test_without_melodys_files_encode_decode_uses_a_loaded_models_codec(demo_weights, settings):
    folder = demo_weights / "musicgen-melody"
    hidden = folder.rename(folder.with_name("hidden-melody"))
    try:
        models = load_models(settings, ("large",))
        assert models.codec is models.get("large").model.compression_model
    finally:
        hidden.rename(folder)


def test_the_docs_list_every_model_version_and_no_other():
    """The README's model table is generated (tooling.readme, checked in test_settings.py); the memory
    plan's table has one row per generating version, in the table's order."""
    rows = [line for line in (REPOSITORY / "docs" / "memory.md").read_text().splitlines() if " LM (" in line]
    named = [row.split("|")[1].strip().split(" LM (")[0] for row in rows]
    assert named == list(GENERATING)
    readme = (REPOSITORY / "README.md").read_text()
    assert len(readme.splitlines()) <= 150  # a newcomer's page: read in five minutes
    assert all(f"| `{name}` |" in readme for name in MODEL_VERSIONS)
