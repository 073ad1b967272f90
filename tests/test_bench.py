"""The benchmark end to end on the demo weights, and its reading of audiocraft's config/ tree."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from tooling.bench.checkpoints import released_configs

REPOSITORY = Path(__file__).resolve().parent.parent
RECORD_FIELDS = (
    "impl",
    "size",
    "device",
    "duration",
    "threads",
    "seed",
    "import_s",
    "setup_s",
    "cold_start_s",
    "generate_s",
    "tokens_s",
    "decode_s",
    "predict_s",
    "audio_s",
    "steps",
    "steps_per_s",
    "step_ms",
    "rtf",
    "peak_mem_mb",
    "tokens_identical",
    "audio_identical",
    "machine",
)


@pytest.mark.slow
def test_tiny_bench_end_to_end(demo_weights: Path, tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    command = [sys.executable, "-m", "tooling.bench", "--size", "tiny", "--device", "cpu", "--duration", "1"]
    command += ["--repeats", "1", "--threads", "1", "--json", str(output)]
    env = dict(os.environ, MUSICGEN_WEIGHTS=str(demo_weights))
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    assert "ours/stock" in result.stdout

    report = json.loads(output.read_text())
    records = report["records"]
    assert [record["impl"] for record in records] == ["audiocraft", "musicgen", "musicgen-stock-loop"]
    assert [record.get("loop") for record in records] == [None, "musicgen (eager)", "audiocraft"]
    for record in records:
        missing = [field for field in RECORD_FIELDS if field not in record]
        assert not missing, f"{record['impl']} lacks {missing}"
        for field in ("import_s", "setup_s", "generate_s", "tokens_s", "decode_s", "predict_s", "rtf", "peak_mem_mb"):
            assert record[field] > 0, (record["impl"], field, record[field])
        assert record["threads"] == record["torch_threads"] == 1
        assert record["steps"] == 50 + 3  # 50 frames per second, plus the delay pattern's 3
        assert abs(record["audio_s"] - 1.0) < 0.05
        assert record["tokens_identical"] and record["audio_identical"]
        assert record["machine"]["cpu_count"] >= 1
    summary = report["summary"]
    assert summary["tokens_identical"] is True
    assert set(summary["median"]) == {"audiocraft", "musicgen", "musicgen-stock-loop"}
    assert summary["ratio_ours_over_stock"]["generate_s"] > 0
    assert summary["ratio_stock_loop_over_stock"]["generate_s"] > 0
    assert "ours/stock" in result.stdout and "stock-loop/stock" in result.stdout
    assert report["command"].startswith("python -m tooling.bench --size tiny")
    assert (demo_weights / "bench" / "tiny" / "bench.json").is_file()  # cached under the weights root


def _fake_sdist(path: Path) -> None:
    """A source archive with the few config/ files the bench reads, in audiocraft's layout."""
    files = {
        "solver/musicgen/default.yaml": "defaults:\n  - /conditioner: none\nsolver: musicgen\nsample_rate: ???\n",
        "solver/musicgen/musicgen_melody_32khz.yaml": """
            defaults:
              - musicgen/default
              - /model: lm/musicgen_lm
              - override /conditioner: chroma2music
              - _self_
            sample_rate: 32000
            channels: 1
            """,
        "model/lm/default.yaml": "transformer_lm:\n  dim: 512\n  num_layers: 8\n  n_q: 8\n  card: 1024\n",
        "model/lm/musicgen_lm.yaml": """
            defaults:
              - lm/default
              - override /conditioner: text2music
            transformer_lm:
              n_q: 4
              card: 2048
            """,
        "model/lm/model_scale/medium.yaml": "transformer_lm:\n  dim: 1536\n  num_heads: 24\n  num_layers: 48\n",
        "conditioner/chroma2music.yaml": "classifier_free_guidance:\n  training_dropout: 0.2\n",
        "model/encodec/default.yaml": "seanet:\n  dimension: 128\n  channels: ${channels}\n  n_filters: 32\n",
        "model/encodec/encodec_large_nq4_s640.yaml": "seanet:\n  n_filters: 64\nrvq:\n  n_q: 4\n  bins: 2048\n",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = textwrap.dedent(text).encode()
            info = tarfile.TarInfo(f"audiocraft-9.9.9/config/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_released_configs_take_the_sizes_from_the_sdist(tmp_path: Path) -> None:
    sdist = tmp_path / "audiocraft-9.9.9.tar.gz"
    _fake_sdist(sdist)
    lm, codec = released_configs("melody", sdist)
    transformer = lm["transformer_lm"]
    assert (transformer["dim"], transformer["num_heads"], transformer["num_layers"]) == (1536, 24, 48)
    assert (transformer["n_q"], transformer["card"]) == (4, 2048)
    assert lm["classifier_free_guidance"]["training_dropout"] == 0.2
    assert set(lm["conditioners"]) == {"self_wav", "description"}  # chroma2music's conditioning
    assert lm["sample_rate"] == 32000
    assert (codec["seanet"]["dimension"], codec["seanet"]["n_filters"], codec["seanet"]["channels"]) == (128, 64, 1)
    assert (codec["rvq"]["n_q"], codec["rvq"]["bins"]) == (4, 2048)


@pytest.mark.slow
def test_agreement_of_the_loops_on_the_cpu(demo_weights: Path, tmp_path: Path) -> None:
    """The GPU agreement check, run on the CPU: our eager and static steps give audiocraft's
    greedy tokens, and their logits follow audiocraft's loop to float32 rounding."""
    output = tmp_path / "agreement.json"
    command = [sys.executable, "-m", "tooling.bench.agreement", "--size", "tiny", "--duration", "2"]
    env = dict(os.environ, MUSICGEN_WEIGHTS=str(demo_weights))
    result = subprocess.run(command + ["--json", str(output)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    report = json.loads(output.read_text())
    assert report["dtype"] == "float32" and report["model_version"] == "large"
    assert report["greedy_float32"] == {"frames": 100, "eager": {"identical": True}, "static": {"identical": True}}
    for form in ("eager", "static"):
        logits = report["logits"][form]
        assert logits["steps"] == 103  # 100 frames + 3 for the delay pattern
        assert logits["max_abs_over_max_logit"] < 1e-5
        assert logits["argmax_agreement"] > 0.99


def test_the_batched_step_bench_on_the_cpu(demo_weights: Path, tmp_path: Path) -> None:
    """The CPU batched step's bench on the tiny checkpoint: every stepped linear map timed per
    row count; oneDNN's packed products keep a row's numbers whatever the row count, on the LM's
    own weights, and the set-up check lets the step run the occupied slots' rows only. Whether
    MKL's wide product does too depends on the CPU (yes on the Intel Xeon the figures were taken
    on, no on an AMD EPYC): the bench says which, and the set-up check never picks it where not."""
    command = [
        sys.executable,
        "-m",
        "tooling.bench.batched_step",
        "--size",
        "tiny",
        "--slots",
        "2",
        "--repeats",
        "1",
    ]
    env = dict(os.environ, MUSICGEN_WEIGHTS=str(demo_weights))
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    lines = result.stdout.splitlines()
    assert "  PackedLinear: True" in lines, result.stdout
    assert "  wide_linear: True" in lines or "  wide_linear: False" in lines, result.stdout
    assert any(line.startswith("the batched step's set-up check: compact=True") for line in lines), result.stdout
    assert [line.split(":")[0] for line in lines if line.startswith("the batched step, ")] == [
        "the batched step, 1 of 2 slots occupied",
        "the batched step, 2 of 2 slots occupied",
    ]
