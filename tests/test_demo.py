"""The demo weights: byte-identical on every run, in the released formats, loadable offline.

The Hugging Face libraries read their cache paths (HF_HOME, TORCH_HOME) once, when first imported,
and conftest points this process's at the session's weights root. So everything that must find the
demo T5 or htdemucs through those caches (T5, demucs, MusicGen.get_pretrained, generation) runs in
one child process pointed at this module's demo root; this process only writes files and reads
them back by path.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from musicgen.demo.builders import write_demo_weights
from musicgen.models.diffusion import MBD_SAFE_GLOBALS, load_mbd
from musicgen.versions import GENERATING
from musicgen.weights import layout, store

REPOSITORY = Path(__file__).resolve().parent.parent


def run_python(code: str, root: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter whose weights root is `root`."""
    # One thread: on a shared 2-core machine torch's spinning worker threads make tiny models 10-100x
    # slower whenever another process holds a core.
    env = dict(os.environ, MUSICGEN_WEIGHTS=str(root))  # one thread, the checkout importable: conftest.py
    for name in ("HF_HOME", "HF_HUB_CACHE", "TORCH_HOME", "TRANSFORMERS_CACHE"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"child failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def t5_snapshot(root: Path) -> Path:
    """The snapshot folder `refs/main` of the T5 repo points at in the Hugging Face cache under root."""
    repo = layout.hf_home(root) / "hub" / f"models--{layout.T5_NAME}"
    return repo / "snapshots" / (repo / "refs" / "main").read_text().strip()


def digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo-weights")
    write_demo_weights(root)
    return root


def test_writes_exactly_the_layout_weights_py_describes(demo_root: Path) -> None:
    store.check_present(list(GENERATING), demo_root)
    snapshot = t5_snapshot(demo_root)
    expected = {
        layout.model_dir(version, demo_root) / name
        for version in GENERATING
        for name in (layout.LM_FILE, layout.CODEC_FILE)
    }
    encodec = layout.hf_home(demo_root) / "hub" / "models--facebook--encodec_32khz"
    encodec_snapshot = encodec / "snapshots" / (encodec / "refs" / "main").read_text()
    expected |= {encodec / "refs" / "main", encodec_snapshot / "config.json", encodec_snapshot / "model.safetensors"}
    expected |= {layout.mbd_path(demo_root), layout.htdemucs_path(demo_root)}
    expected |= {snapshot / name for name in ("config.json", "model.safetensors", "tokenizer.json")}
    expected |= {snapshot / "tokenizer_config.json", snapshot.parent.parent / "refs" / "main"}
    assert {path for path in demo_root.rglob("*") if path.is_file()} == expected
    assert len(snapshot.name) == 40 and int(snapshot.name, 16) >= 0
    total = sum(path.stat().st_size for path in expected)
    assert total < 45_000_000, f"demo weights grew to {total} bytes"  # ten tiny LMs, 41 MB in all


@pytest.mark.slow
def test_is_byte_identical_across_runs_and_processes(demo_root: Path, tmp_path: Path) -> None:
    other = tmp_path / "again"
    code = "from pathlib import Path\nfrom musicgen.demo.builders import write_demo_weights\n"
    run_python(code + f"write_demo_weights(Path({str(other)!r}))", other)
    first, second = digests(demo_root), digests(other)
    assert first.keys() == second.keys()
    assert first == second


def test_writing_leaves_the_callers_random_state_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    write_demo_weights(tmp_path)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("version", ["melody", "large"])
def test_lm_and_codec_are_audiocraft_exports(demo_root: Path, version: str) -> None:
    from omegaconf import OmegaConf

    folder = layout.model_dir(version, demo_root)
    for name in (layout.LM_FILE, layout.CODEC_FILE):
        package = torch.load(folder / name, weights_only=True)  # config is YAML text, no pickled objects
        assert set(package) == {"best_state", "xp.cfg", "version", "exported"}
        assert package["exported"] is True and isinstance(package["xp.cfg"], str)

    lm = torch.load(folder / layout.LM_FILE, weights_only=True)
    cfg = OmegaConf.create(lm["xp.cfg"])
    assert cfg.sample_rate == 32000 and cfg.dataset.segment_duration == 30
    assert cfg.codebooks_pattern.modeling == "delay" and cfg.transformer_lm.n_q == 4
    assert cfg.transformer_lm.card == 2048 and cfg.transformer_lm.dim == 64
    assert cfg.conditioners.description.t5.name == "t5-base"
    if version == "melody":
        assert list(cfg.fuser.prepend) == ["self_wav", "description"] and list(cfg.fuser.cross) == []
        assert cfg.conditioners.self_wav.model == "chroma_stem"
    else:
        assert list(cfg.fuser.cross) == ["description"] and list(cfg.fuser.prepend) == []
        assert set(cfg.conditioners) == {"description"}
    floats = [t for t in lm["best_state"].values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)  # like the released LMs

    codec = torch.load(folder / layout.CODEC_FILE, weights_only=True)
    codec_cfg = OmegaConf.create(codec["xp.cfg"])
    assert math.prod(codec_cfg.seanet.ratios) == 640 and codec_cfg.sample_rate == 32000
    assert codec_cfg.rvq.n_q == 4 and codec_cfg.rvq.bins == 2048 and codec_cfg.channels == 1
    for q in range(4):
        prefix = f"quantizer.vq.layers.{q}._codebook."
        assert codec["best_state"][prefix + "inited"].item() == 1
        assert codec["best_state"][prefix + "embed"].abs().sum() > 0


def test_htdemucs_is_a_demucs_package(demo_root: Path) -> None:
    from demucs.htdemucs import HTDemucs

    package = torch.load(layout.htdemucs_path(demo_root), weights_only=False)
    assert set(package) == {"klass", "args", "kwargs", "state", "training_args"}
    assert package["klass"] is HTDemucs
    assert package["kwargs"]["sources"] == ["drums", "bass", "other", "vocals"]
    assert package["kwargs"]["samplerate"] == 44100


def test_mbd_holds_pickled_configs_that_need_an_allow_list(demo_root: Path) -> None:
    from omegaconf import DictConfig

    path = layout.mbd_path(demo_root)
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        with pytest.raises(Exception, match="Unsupported global"):
            torch.load(path, weights_only=True)
        with torch.serialization.safe_globals(MBD_SAFE_GLOBALS):  # the production allow-list
            package = torch.load(path, weights_only=True)
    finally:
        torch.serialization.add_safe_globals(saved)
    assert package["sample_rate"] == 32000 and package["n_bands"] == 4
    assert set(package) == {"sample_rate", "n_bands", 0, 1, 2, 3}
    for band in range(4):
        assert set(package[band]) == {"model_state", "processor_state", "cfg"}
        cfg = package[band]["cfg"]
        assert isinstance(cfg, DictConfig)
        assert cfg.filter.idx_band == band and cfg.processor.use and cfg.sample_rate == 32000


def test_mbd_decodes_demo_tokens_through_audiocraft(demo_root: Path) -> None:
    from audiocraft.models.loaders import load_compression_model

    codec = load_compression_model(str(layout.model_dir("large", demo_root)), device="cpu")
    mbd = load_mbd(codec, "cpu", demo_root)
    torch.manual_seed(0)
    tokens = torch.randint(0, 2048, (1, 4, 5))  # 0.1 s at 50 Hz
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see run_python
    try:
        wav = mbd.tokens_to_wav(tokens)
    finally:
        torch.set_num_threads(threads)
    assert wav.shape == (1, 1, 3200)
    assert torch.isfinite(wav).all() and wav.abs().max() > 0


CHILD = """
import json, math, torch
from musicgen.boot import boot
from musicgen.weights.layout import model_dir
root = boot().weights_root  # caches -> $MUSICGEN_WEIGHTS, hub offline

out = {}
from audiocraft.modules.conditioners import T5Conditioner
t5 = T5Conditioner("t5-base", output_dim=64, finetune=False, device="cpu")
embedding, mask = t5(t5.tokenize(["calm piano", None]))
out["t5"] = {"d_model": t5.t5.config.d_model, "layers": t5.t5.config.num_layers,
             "shape": list(embedding.shape), "finite": bool(torch.isfinite(embedding).all())}

from demucs.pretrained import get_model
bag = get_model("htdemucs")
out["htdemucs"] = {"models": len(bag.models), "sources": list(bag.sources), "samplerate": bag.samplerate,
                   "parameters": sum(p.numel() for p in bag.parameters())}

from audiocraft.models import MusicGen
def summary(wav):
    return {"shape": list(wav.shape), "finite": bool(torch.isfinite(wav).all()), "peak": wav.abs().max().item(),
            "mean": wav.mean().item()}
for version in ("melody", "large"):
    model = MusicGen.get_pretrained(str(model_dir(version, root)), device="cpu")
    model.set_generation_params(duration=1)
    torch.manual_seed(0)
    entry = {"text": summary(model.generate(["calm piano"])), "sample_rate": int(model.sample_rate),
             "frame_rate": float(model.frame_rate), "max_duration": float(model.max_duration),
             "conditioners": sorted(model.lm.condition_provider.conditioners)}
    if version == "melody":
        t = torch.arange(2 * 32000) / 32000
        melody = (0.5 * torch.sin(2 * math.pi * 440 * t)).view(1, 1, -1)
        entry["chroma"] = summary(model.generate_with_chroma(["calm piano"], melody, 32000))
    out[version] = entry
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def loaded(demo_root: Path) -> dict:
    """What a fresh process pointed at the demo root loads and generates, offline."""
    result = run_python(CHILD, demo_root)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_t5_stand_in_loads_offline_through_audiocraft(loaded: dict) -> None:
    assert loaded["t5"] == {"d_model": 768, "layers": 1, "shape": [2, 3, 64], "finite": True}


def test_htdemucs_stand_in_loads_offline_through_demucs(loaded: dict) -> None:
    htdemucs = loaded["htdemucs"]
    assert htdemucs["models"] == 1 and htdemucs["samplerate"] == 44100
    assert htdemucs["sources"] == ["drums", "bass", "other", "vocals"]
    assert htdemucs["parameters"] < 200_000  # the stand-in, not the released 42 M


@pytest.mark.parametrize("version", ["melody", "large"])
def test_get_pretrained_generates_one_second(loaded: dict, version: str) -> None:
    entry = loaded[version]
    assert entry["sample_rate"] == 32000 and entry["frame_rate"] == 50 and entry["max_duration"] == 30
    assert entry["text"]["shape"] == [1, 1, 32000]
    assert entry["text"]["finite"] and entry["text"]["peak"] > 1e-4
    assert abs(entry["text"]["mean"]) < 0.05 * entry["text"]["peak"]  # noise, not a DC offset


def test_melody_generates_with_chroma(loaded: dict) -> None:
    melody = loaded["melody"]
    assert melody["conditioners"] == ["description", "self_wav"]
    assert loaded["large"]["conditioners"] == ["description"]
    assert melody["chroma"]["shape"] == [1, 1, 32000]
    assert melody["chroma"]["finite"] and melody["chroma"]["peak"] > 1e-4
