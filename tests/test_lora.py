"""Low-rank adapters (musicgen.lora, docs/lora.md) on the demo weights, in process: a LoRA training
writes a small adapter that records how it was made (train.py's own entry), the same seed the same
file; an adapter changes the output and serves per request and as the weights with the same bytes;
lora_scale 0 is the base model; a bad adapter is refused naming lora_weights before any model
work; a training that cannot fit is refused, naming what to change, before the model loads.
Through the real server: test_batching.py (adapters in the batch), test_server_callers.py
(refusals), test_train.py (POST /trainings with lora_rank, then --weights)."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import write_scale

from musicgen.errors import InputError
from musicgen.lora.adapter import Geometry, read_adapter, write_adapter
from musicgen.request import Request
from musicgen.serving.entry_points import load_train_function
from musicgen.serving.service import MusicGenService
from musicgen.train.options import TrainRequest
from musicgen.train.run import fine_tune
from musicgen.weights import layout

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PIECE = {"model_version": "large", "prompt": "calm", "duration": 2, "seed": 1}


@pytest.fixture(scope="module")
def service(settings) -> MusicGenService:
    return MusicGenService.load(settings.replace(model_versions=("large",)))


def predict(service: MusicGenService, **inputs) -> bytes:
    return service.predict(Request(**{**PIECE, **inputs})).path.read_bytes()


def test_train_py_writes_a_small_adapter_that_records_how_it_was_made(settings, tmp_path):
    """Cog's train() with lora_rank: the output is the adapter alone, in safetensors, naming its
    base, rank, targets and the dataset's digest; the same seed gives the same file, another
    seed another."""
    folder = tmp_path / "data"
    folder.mkdir()
    archive = folder / "scales.zip"
    with zipfile.ZipFile(archive, "w") as members:
        members.write(write_scale(folder / "a.wav", 3, rate=32000, channels=1), "a.wav")
    train = load_train_function()
    inputs = {"dataset_path": archive, "one_same_description": "a scale", "model_version": "large", "epochs": 2,
              "batch_size": 1, "lr": 1e-2, "warmup_steps": 0, "drop_vocals": False, "cfg_p": 0.3}  # fmt: skip
    kept = tmp_path / "kept.safetensors"  # Cog reads an output before the next training starts
    runs = []
    for seed in (1, 1, 2):
        weights = Path(train(**inputs, seed=seed, lora_rank=8).weights)
        assert weights.name == layout.ADAPTER_FILE
        runs.append(weights.read_bytes())
        if not kept.exists():
            kept.write_bytes(runs[0])
    first = runs[0]
    assert runs[1] == first and runs[2] != first
    adapter = read_adapter(kept)
    lm_file = layout.model_dir("large", settings.weights_root) / layout.LM_FILE
    assert (adapter.model_version, adapter.rank, adapter.alpha) == ("large", 8, 8.0)
    assert len(adapter.training["dataset"]["sha256"]) == 64 and adapter.training["inputs"]["lora_rank"] == 8
    assert adapter.training["inputs"]["seed"] == 1 and adapter.training["steps"] == 2
    header = json.loads(first[8 : 8 + int.from_bytes(first[:8], "little")])
    assert json.loads(header["__metadata__"]["musicgen_lora"])["targets"] == ["qkv", "out_proj", "linear1", "linear2"]
    assert {entry["dtype"] for name, entry in header.items() if name != "__metadata__"} == {"F16"}
    assert len(first) <= 0.03 * lm_file.stat().st_size  # the target's 3 % (rank 8)


def test_an_adapter_serves_per_request_and_as_the_weights_with_the_same_bytes(settings, service, adapter):
    base = predict(service)
    per_request = predict(service, lora_weights=adapter)
    assert per_request != base  # a few steps at a high learning rate move the piece
    assert predict(service, lora_weights=adapter, lora_scale=0) == base  # scale 0: the base model, byte for byte
    assert predict(service, lora_weights=adapter, lora_scale=0.5) not in (base, per_request)
    assert read_adapter(adapter).digest.encode() in per_request  # the file records the adapter (lora_sha256)
    served = MusicGenService.load(settings.replace(model_versions=("large",)), fine_tuned=str(adapter.parent))
    assert served.models.adapters.weights is not None and not served.models.resident["large"].model.name.endswith("bin")
    assert predict(served) == per_request  # served as the weights: the same bytes
    assert predict(served, lora_scale=0) == base
    assert predict(served, lora_weights=adapter) == per_request  # given again per request: the same adapter
    assert len(served.models.adapters.cache) == 1  # cached once, by content


def adapter_like(adapter_path: Path, folder: Path, **changes) -> Path:
    """A copy of the adapter's file with some of what it says changed."""
    adapter = read_adapter(adapter_path)
    pairs, geometry = adapter.pairs, changes.pop("geometry", adapter.geometry)
    if geometry != adapter.geometry:
        shapes = {target: geometry.shapes(target) for target in ("qkv", "out_proj", "linear1", "linear2")}
        pairs = {
            (index, target): (
                torch.zeros(adapter.rank, shapes[target][1]),
                torch.zeros(shapes[target][0], adapter.rank),
            )
            for index in range(geometry.layers)
            for target in shapes
        }
    if "poison" in changes:
        pairs = {key: (down.float(), up.float()) for key, (down, up) in pairs.items()}
        pairs[0, "qkv"][0][0, 0] = float(changes.pop("poison"))
    fields = {"model_version": adapter.model_version, "rank": adapter.rank, "alpha": adapter.alpha, **changes}
    path = folder / f"{len(list(folder.iterdir()))}.safetensors"
    return write_adapter(pairs, fields["model_version"], fields["rank"], fields["alpha"], geometry, {}, path)


def test_a_bad_adapter_is_refused_naming_lora_weights_before_any_model_work(service, adapter, tmp_path):
    """Another model's adapter, one made for an LM of other widths, one with NaN in it, a file that
    is no adapter, a path given as text, a scale with nothing to scale, an adapter for
    encode-decode: each an InputError naming lora_weights (or lora_scale), no LM step taken."""
    loop = service.models.get("large").loop
    geometry = read_adapter(adapter).geometry
    wider = Geometry(geometry.layers, geometry.dim * 2, geometry.hidden * 2)
    (tmp_path / "text.safetensors").write_text("not an adapter")
    cases = {
        "lora_weights: it is an adapter of model_version='melody', not of 'large'": {
            "lora_weights": adapter_like(adapter, tmp_path, model_version="melody")
        },
        "lora_weights: it was made for an LM of 2 layers of width 128": {
            "lora_weights": adapter_like(adapter, tmp_path, geometry=wider)
        },
        "lora_weights: its tensor layers.0.qkv.down holds NaN": {
            "lora_weights": adapter_like(adapter, tmp_path, poison="nan")
        },
        "lora_weights: it is not a readable safetensors file": {"lora_weights": tmp_path / "text.safetensors"},
        "lora_weights='/etc/passwd' is not a URL": {"lora_weights": "/etc/passwd"},
        "lora_scale=0.5 scales an adapter, and none applies": {"lora_scale": 0.5},
        "lora_scale=3.0 is out of range; it must be between -1.0 and 2.0": {"lora_weights": adapter, "lora_scale": 3.0},
        "lora_weights adapts a language model; model_version='encode-decode' has none": {
            "model_version": "encode-decode", "input_audio": adapter, "lora_weights": adapter
        },
    }  # fmt: skip
    steps = loop.steps
    for message, inputs in cases.items():
        with pytest.raises(InputError) as refused:
            service.predict(Request(**{**PIECE, **inputs}))
        assert str(refused.value).startswith(message), (message, str(refused.value))
    assert loop.steps == steps and len(service.models.adapters.cache) <= 1  # no model work for any of them


def test_a_training_that_cannot_fit_is_refused_before_the_model_loads(settings, adapter, caplog):
    """The memory plan runs first: with less memory than full fine-tuning needs but enough for
    adapters, the message names the need, the memory there is and the lora_rank that fits; with
    less than anything needs, it says so. The dataset is not read and no model is loaded."""
    from musicgen.train.memory import estimate

    base = layout.model_dir("large", settings.weights_root) / layout.LM_FILE
    request = TrainRequest(dataset_path=adapter, model_version="large", batch_size=1)  # the file is never read
    full = estimate(base, request, "cpu", available=0)  # nothing fits: the least it needs, checkpointed
    lora = estimate(base, TrainRequest(**{**vars(request), "lora_rank": 16}), "cpu", available=0)
    assert full.checkpointing and lora.checkpointing and lora.need < full.need
    between = round((lora.need + full.need) / 2 / 1e9, 6)
    caplog.set_level(logging.INFO)
    with pytest.raises(InputError) as refused:
        fine_tune(request, settings.replace(train_memory_gb=between))
    message = str(refused.value)
    assert message.startswith(
        f"fine-tuning large with lora_rank=0 and batch_size=1 on cpu needs about {full.need / 1e9:.1f} GB"
    )
    assert f"MUSICGEN_TRAIN_MEMORY_GB={between:g} is {between:.1f} GB. Set lora_rank=16 (low-rank adapters)" in message
    with pytest.raises(InputError, match="No lora_rank or batch_size fits it"):
        fine_tune(TrainRequest(**{**vars(request), "lora_rank": 4}), settings.replace(train_memory_gb=0.01))
    assert not [r for r in caplog.records if r.name.startswith("musicgen.train") and "fine-tuning" in r.getMessage()]
    assert not [r for r in caplog.records if r.name.startswith("musicgen.models")]  # nothing loaded
