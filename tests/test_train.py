"""Fine-tuning (train.py, musicgen/train/) on the demo weights with datasets the tests make: short
tones with captions. The loss goes down, a seed reproduces a run, the checkpoint serves, bad
datasets are refused or skipped as docs/fine-tuning.md says, and the community fine-tuner's file serves."""

from __future__ import annotations

import base64
import io
import logging
import re
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from helpers import START_TIMEOUT, Server, data_uri, predict_with_defaults, run_cli, zero_bit_wav

from musicgen.errors import InputError
from musicgen.lora.adapter import read_adapter
from musicgen.request import Request
from musicgen.settings import Settings, read_settings
from musicgen.train.export import read_record
from musicgen.train.options import TrainRequest
from musicgen.train.run import fine_tune
from musicgen.weights.layout import ADAPTER_FILE, LM_FILE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE = 32000
TONES = {"low": 220.0, "mid": 330.0, "high": 440.0, "top": 550.0}  # name -> Hz
# Enough steps on the tiny demo LM that its loss must fall clearly (it starts near ln 2048 = 7.6).
LEARNING = {"epochs": 6, "batch_size": 2, "lr": 1e-3, "warmup_steps": 2, "drop_vocals": False, "seed": 3}
MIN_LOSS_DROP = 0.2  # the last epoch's mean loss is at least 20 % below the first epoch's


def tone(hz: float, seconds: float = 3.0) -> bytes:
    t = np.arange(round(seconds * RATE)) / RATE
    buffer = io.BytesIO()
    soundfile.write(buffer, 0.3 * np.sin(2 * np.pi * hz * t), RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def zip_dataset(path: Path, members: dict[str, bytes | str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


def captioned_tones(path: Path) -> Path:
    members = {}
    for name, hz in TONES.items():
        members[f"tones/{name}.wav"] = tone(hz)
        members[f"tones/{name}.txt"] = f"a pure sine tone at {hz:g} Hz"
    return zip_dataset(path, members)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return captioned_tones(tmp_path_factory.mktemp("dataset") / "tones.zip")


@pytest.fixture(scope="module")
def trained(settings, dataset, tmp_path_factory):
    """Two runs with the same seed and one with another."""
    out = tmp_path_factory.mktemp("trained")
    first = fine_tune(TrainRequest(dataset_path=dataset, **LEARNING), settings, output_dir=out / "first")
    again = fine_tune(TrainRequest(dataset_path=dataset, **LEARNING), settings, output_dir=out / "again")
    other = fine_tune(TrainRequest(dataset_path=dataset, **{**LEARNING, "seed": 4}), settings, output_dir=out / "other")
    return first, again, other


def test_training_lowers_the_loss(trained):
    first, *_ = trained
    assert len(first.losses) == LEARNING["epochs"] * 2  # 4 segments in batches of 2
    assert first.epoch_losses[-1] < (1 - MIN_LOSS_DROP) * first.epoch_losses[0], first.epoch_losses


def test_the_same_seed_gives_the_same_losses_and_checkpoint(trained):
    first, again, other = trained
    assert first.losses == again.losses
    one, two = (torch.load(run.checkpoint, weights_only=True)["best_state"] for run in (first, again))
    assert one.keys() == two.keys() and all(torch.equal(one[name], two[name]) for name in one)
    assert first.checkpoint.read_bytes() == again.checkpoint.read_bytes()
    assert first.losses != other.losses  # the seed does decide


def test_the_checkpoint_records_its_training(trained, dataset):
    first, *_ = trained
    package = torch.load(first.checkpoint, weights_only=True)
    assert all(tensor.dtype == torch.float16 for tensor in package["best_state"].values() if tensor.is_floating_point())
    record = read_record(package)
    assert record["inputs"] == {**LEARNING, "one_same_description": None, "cfg_p": 0.3, "lora_rank": 0}
    assert record["dataset"]["file"] == dataset.name and record["dataset"]["segments"] == 4
    assert record["base"]["model_version"] == "melody" and record["steps"] == 12
    assert record["loss_last_epoch"] == pytest.approx(first.epoch_losses[-1])


def test_a_fine_tune_of_small_serves_in_smalls_slot(settings, dataset, predictor, tmp_path):
    """small is text-only and mono like the preloaded large: its training record, not the first
    fitting slot, decides where a fine-tune of it serves."""
    from musicgen.serving.service import MusicGenService

    request = TrainRequest(dataset_path=dataset, model_version="small", **{**LEARNING, "epochs": 1})
    tuned = fine_tune(request, settings, output_dir=tmp_path / "small").checkpoint
    service = MusicGenService.load(settings, fine_tuned=str(tuned))
    assert service.models.checkpoints["small"] == tuned and "small" in service.models.preloaded
    assert service.models.checkpoints["large"] == settings.weights_root / "musicgen-large" / LM_FILE
    for version, same in (("small", False), ("large", True)):
        inputs = {"model_version": version, "prompt": "calm", "duration": 1, "seed": 2}
        served = service.predict(Request(**inputs)).path.read_bytes()
        assert (served == predict_with_defaults(predictor, **inputs).read_bytes()) is same, version


def test_the_checkpoint_serves_with_tokens_of_its_own(trained, predictor, demo_weights):
    """Predictor.setup(weights=...) serves it in melody's slot; same prompt and seed, other audio."""
    from musicgen.serving.entry_points import load_predictor_class

    fine = load_predictor_class()()
    fine.setup(weights=str(trained[0].checkpoint))
    assert fine.runner.service.models.checkpoints["melody"] == trained[0].checkpoint
    inputs = {"prompt": "a pure sine tone at 330 Hz", "duration": 1, "seed": 11}
    tuned = predict_with_defaults(fine, **inputs).read_bytes()
    assert tuned == predict_with_defaults(fine, **inputs).read_bytes()  # reproducible
    assert tuned != predict_with_defaults(predictor, **inputs).read_bytes()  # not the base model's


@pytest.mark.slow
def test_the_cli_trains_and_serves_the_checkpoint(tmp_path, demo_weights, dataset):
    result = run_cli(
        "train",
        "-i",
        f"dataset_path={dataset}",
        "-i",
        "epochs=1",
        "-i",
        "batch_size=4",
        "-i",
        "seed=2",
        "-i",
        "one_same_description=sines",
        "-o",
        "trained",
        cwd=tmp_path,
        weights=demo_weights,
    )  # fmt: skip  (drop_vocals at its default: HT-Demucs runs)
    assert result.returncode == 0, result.stderr
    checkpoint = tmp_path / "trained" / LM_FILE
    assert f"checkpoint: {checkpoint}" in result.stdout
    assert re.search(r"step 1/1 \(epoch 1/1\): loss \d+\.\d+, lr \S+, \S+ steps/s, about \d+ s left", result.stderr)
    assert re.search(
        r"fine-tuned melody in \S+ s .*: 1 steps, loss \S+ -> \S+ \(first -> last epoch mean\)", result.stderr
    )
    record = read_record(torch.load(checkpoint, weights_only=True))
    assert record["inputs"]["drop_vocals"] is True and record["inputs"]["seed"] == 2
    served = run_cli("predict", "--weights", str(checkpoint.parent), "-i", "prompt=sines", "-i", "duration=1",
                     "-o", "out.wav", cwd=tmp_path, weights=demo_weights)  # fmt: skip
    assert served.returncode == 0, served.stderr
    assert f"serving the fine-tuned checkpoint {checkpoint}" in served.stderr
    assert soundfile.info(tmp_path / "out.wav").duration == pytest.approx(1, abs=0.05)


@pytest.mark.parametrize(
    "dataset_path, output, message",
    [
        ("http://127.0.0.1:9/songs.zip", "trained", "the command line trains on a local file; download it first"),
        (None, "taken/trained", "-o taken/trained: cannot make this folder (Not a directory)."),
    ],
)
def test_the_cli_refuses_a_url_dataset_or_an_output_it_cannot_make_before_training(
    tmp_path, demo_weights, dataset, dataset_path, output, message
):
    (tmp_path / "taken").write_text("a file where the folder would go")
    result = run_cli("train", "-i", f"dataset_path={dataset_path or dataset}", "-o", output, cwd=tmp_path,
                     weights=demo_weights)  # fmt: skip
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "step " not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_real_server_trains_and_then_serves_the_result(tmp_path, demo_weights, dataset):
    """`serve --train` (coglet in training mode, as `cog train` runs the image): POST /trainings with
    the dataset as a data: URI and lora_rank 4; then `serve --weights` with the adapter it returned
    is READY and serves it on its base (the CLI's test trains every weight)."""
    training = Server(demo_weights, tmp_path / "train.log", args=("--train",))
    try:
        training.wait_for({"READY"}, START_TIMEOUT)
        body = {
            "input": {"dataset_path": data_uri(dataset, "application/zip"), "epochs": 1, "drop_vocals": False,
                      "lora_rank": 4, "model_version": "large"},
        }  # fmt: skip
        response = training.post("/trainings", body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["status"] == "succeeded", answer.get("error") or training.log_tail()
        uri = answer["output"]["weights"]
        # the caller reads the training's logs: names it sent and model versions, no server paths
        assert "fine-tuned large in " in answer["logs"] and "rank-4 adapters" in answer["logs"]
        assert "/tmp" not in answer["logs"] and str(demo_weights) not in answer["logs"], answer["logs"]
    finally:
        training.stop()
    adapter = tmp_path / "from-the-server" / ADAPTER_FILE
    adapter.parent.mkdir()
    adapter.write_bytes(base64.b64decode(uri.partition(",")[2]))
    assert read_adapter(adapter).training["dataset"]["segments"] == 4
    serving = Server(demo_weights, tmp_path / "serve.log", args=("--weights", str(adapter)))
    try:
        health = serving.wait_for({"READY", "SETUP_FAILED"}, START_TIMEOUT)
        assert health["status"] == "READY", health
        assert f"serving the adapter {adapter} (rank 4) on large" in health["setup"]["logs"]
        assert serving.predict(model_version="large", prompt="sines", duration=1, seed=1)["status"] == "succeeded"
    finally:
        serving.stop()


# --------------------------------------------------------------------------------------------
# Datasets: what is read, what is skipped, what is refused


def train_on(path: Path, tmp_path: Path, **inputs):
    request = TrainRequest(dataset_path=path, **{**LEARNING, "epochs": 1, **inputs})
    return fine_tune(request, read_settings(), output_dir=tmp_path / "out")  # the tests' weights root


@pytest.mark.parametrize(
    "members, message",
    [
        ({}, "dataset_path holds no usable audio (an audio file of at least 1 s in a format predict accepts): "
             "it holds no files."),
        ({"README.md": "# my songs", "notes/a.txt": "a caption without audio"},
         "README.md: dataset file 'README.md' is not a readable audio file"),
        ({"broken.wav": b"RIFF\x00\x00\x00\x00WAVEjunk" * 50, "empty.mp3": b""},
         "broken.wav: dataset file 'broken.wav' is not a readable audio file"),
        ({"blip.wav": tone(440, 0.5)}, "blip.wav: 0.50 s long; a segment must be at least 1 s"),
    ],
)  # fmt: skip
def test_a_dataset_without_usable_audio_is_refused_before_training(demo_weights, tmp_path, members, message):
    with pytest.raises(InputError) as refused:
        train_on(zip_dataset(tmp_path / "data.zip", members), tmp_path)
    assert message in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_bad_members_are_skipped_with_a_warning_naming_them(demo_weights, tmp_path, caplog):
    members = {
        "good.wav": tone(330),
        "good.txt": "a sine",
        "empty.wav": b"",
        "noise.flac": b"not audio at all",
        "long.wav": tone(440),
        "long.txt": "x" * 2001,
        "accents.wav": tone(550),
        "accents.txt": "é" * 5000,  # longer than the bytes read: the cut falls inside a character
        "__MACOSX/._good.wav": b"resource fork",
        ".DS_Store": b"finder",
        "zero-bits.wav": zero_bit_wav(),  # a stream ffmpeg has no decoder for
    }
    with caplog.at_level(logging.WARNING, logger="musicgen.train"):
        result = train_on(zip_dataset(tmp_path / "data.zip", members), tmp_path)
    warnings = "\n".join(record.getMessage() for record in caplog.records)
    assert "skipped empty.wav: dataset file 'empty.wav' is an empty file (0 bytes)" in warnings
    assert "skipped noise.flac: dataset file 'noise.flac' is not a readable audio file" in warnings
    assert "skipped long.wav: its caption long.txt is longer than 2000 characters" in warnings
    assert "skipped accents.wav: its caption accents.txt is longer than 2000 characters" in warnings
    assert "skipped zero-bits.wav: dataset file 'zero-bits.wav' has an audio stream that cannot be decoded" in warnings
    assert "MACOSX" not in warnings and "DS_Store" not in warnings  # archivers' files, not the caller's
    assert result.record["dataset"]["files"] == 1 and result.record["dataset"]["skipped"] == [
        "empty.wav",
        "noise.flac",
        "long.wav",
        "accents.wav",
        "zero-bits.wav",
    ]


def test_member_names_never_become_paths(demo_weights, tmp_path, monkeypatch):
    """`../x.wav` and `/abs.wav` are read as data; nothing lands outside the work folders."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("TMPDIR", str(work))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    dataset = zip_dataset(tmp_path / "data.zip", {"../escaped.wav": tone(220), "/absolute.wav": tone(330)})
    result = train_on(dataset, tmp_path)
    assert result.record["dataset"]["files"] == 2
    assert not list(tmp_path.parent.rglob("escaped.wav")) and not Path("/absolute.wav").exists()
    assert not list(work.rglob("member-*"))  # the scratch copies are gone too


def test_a_tar_gz_with_links_and_one_caption_for_all(demo_weights, tmp_path):
    path = tmp_path / "data.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, content in {"a.wav": tone(220), "b.ogg": b"", "c.wav": tone(330), ".": tone(440)}.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        link = tarfile.TarInfo("link.wav")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    result = train_on(path, tmp_path, one_same_description="tones")
    assert result.record["dataset"]["files"] == 2 and result.record["dataset"]["skipped"] == ["'.'", "b.ogg"]
    assert result.record["inputs"]["one_same_description"] == "tones"


def test_one_audio_file_is_a_dataset_and_is_cut_into_30_s_segments(demo_weights, tmp_path):
    path = tmp_path / "song.wav"
    path.write_bytes(tone(220, seconds=61.5))  # 30 + 30 + 1.5
    result = train_on(path, tmp_path, batch_size=4)
    assert result.record["dataset"]["segments"] == 3 and result.record["dataset"]["seconds"] == pytest.approx(61.5)


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"model_version": "encode-decode"}, "model_version='encode-decode' runs audio through the codec and back"),
        ({"epochs": 0}, "epochs=0 is out of range; it must be between 1 and 100."),
        ({"epochs": 2.5}, "epochs=2.5 is not allowed; it must be a whole number."),
        ({"lr": 1.0}, "lr=1.0 is out of range; it must be between 1e-07 and 0.01."),
        ({"cfg_p": 1.5}, "cfg_p=1.5 is out of range"),
        ({"one_same_description": "y" * 2001}, "one_same_description is 2001 characters long; it may be at most 2000"),
        ({"dataset_path": Path("/no/such/archive.zip")}, "dataset_path='/no/such/archive.zip': no such file"),
        (
            {"dataset_path": "/etc/passwd"},
            "dataset_path='/etc/passwd' is not a URL; give an http(s) URL or a data: URI",
        ),
    ],
)
def test_training_mistakes_are_named_before_anything_loads(dataset, inputs, message):
    with pytest.raises(InputError) as refused:
        fine_tune(TrainRequest(**{"dataset_path": dataset, **inputs}), Settings(weights_root=Path("/nonexistent")))
    assert message in str(refused.value)


# --------------------------------------------------------------------------------------------
# The community fine-tuner's trained_model.tar


@pytest.mark.parametrize("version", ["melody", "large", "stereo-melody-large"])  # mono melody, text-only, stereo
def test_a_community_checkpoint_serves_the_same_audio_as_the_weights_it_holds(
    predictor, demo_weights, tmp_path, version
):
    from musicgen.demo.builders import write_community_checkpoint
    from musicgen.serving.entry_points import load_predictor_class

    source = demo_weights / f"musicgen-{version}" / LM_FILE
    community = write_community_checkpoint(source, tmp_path / "trained_model.tar")
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(community, weights_only=True)  # a pickled config: torch's safe loader cannot read it
    served = load_predictor_class()()
    served.setup(weights=str(community))
    assert served.runner.service.models.checkpoints[version] == community
    for inputs in ({"prompt": "calm", "duration": 1, "seed": 4}, {"prompt": "x", "duration": 2, "seed": 5}):
        inputs["model_version"] = version
        assert (
            predict_with_defaults(served, **inputs).read_bytes()
            == predict_with_defaults(predictor, **inputs).read_bytes()
        )


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_pickle_outside_the_allow_list_is_refused_naming_the_file_and_the_class(settings, tmp_path, zip_format):
    from musicgen.errors import WeightsError
    from musicgen.models.load import load_models

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    hostile = tmp_path / "trained_model.tar"
    torch.save({"xp.cfg": Payload(), "model": {}}, hostile, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(WeightsError) as refused:
        load_models(settings, fine_tuned=str(hostile))
    assert str(hostile) in str(refused.value)
    assert not (tmp_path / "pwned").exists()
    if zip_format:  # (torch refuses to memory-map the legacy format before reading any pickle)
        assert "posix.system" in str(refused.value)
