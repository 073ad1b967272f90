"""The side-by-side benchmark: stock audiocraft and our Predictor on the same random checkpoints.

`python -m musicgen bench --size S --device D --duration SECONDS` runs, interleaved (stock, ours,
stock, ours, ...) and each in a fresh process, with the same prompt, seed and thread count:

    audiocraft  what a user of audiocraft writes: MusicGen.get_pretrained(dir),
                set_generation_params(duration=...), torch.manual_seed(seed), generate([prompt]),
                audio_write(..., strategy="loudness", loudness_compressor=True)
    musicgen    predict.py's Predictor: setup(), then predict(model_version, prompt, duration, seed)

Both processes record the same probes (hooks on the loaded MusicGen: token generation time, decode
time, LM steps, the tokens themselves), so the two sides are timed by the same code:

    import_s     importing the libraries (stock: audiocraft; ours: predict.py and musicgen.service)
    setup_s      get_pretrained() / Predictor.setup()
    generate_s   model.generate([prompt]) / musicgen.generate.generate(): seeding, sampling the
                 tokens and the EnCodec decode (stock's generate() decodes too)
    predict_s    stock: set_generation_params + seed + generate + audio_write; ours: predict()
    tokens_s, decode_s, steps  inside generate: the LM sampling loop, EnCodec, LM steps

Checkpoints (cached under <weights root>/bench/<size>/, a weights root of its own):
    tiny    the demo weights (musicgen.demo); served as model_version "large" (text, cross attention)
    small   facebook/musicgen-small's architecture (model_scale small, text2music) as "large"
    melody  facebook/musicgen-melody's (model_scale medium, chroma2music) as "melody": GPU only
    large   facebook/musicgen-large's (model_scale large, text2music) as "large": GPU only
The dimensions come from audiocraft's own config/ tree, read from its PyPI source archive (pip
download, cached under <weights root>/bench/sdist/); T5 is T5-base-sized. Random weights: the
audio is noise, the arithmetic is the real one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import typing as tp
from dataclasses import dataclass
from pathlib import Path

from musicgen.errors import InputError
from musicgen.weights import CODEC_FILE, HF_DIR, LM_FILE, MODEL_DIRS, TORCH_DIR, weights_root

IMPLS = ("audiocraft", "musicgen")  # stock first in every pair
DEFAULT_PROMPT = "calm piano"
DEFAULT_SEED = 7
CHILD_TIMEOUT = 3 * 3600  # s; one process (load + one generation), a large model at 30 s on a CPU included
BUILD_TIMEOUT = 3 * 3600  # s; building the random large checkpoints on a CPU


@dataclass(frozen=True)
class Size:
    version: str  # the model_version our Predictor serves it as (its conditioning: text or text + chroma)
    solver: str | None  # config/solver/musicgen/<solver>.yaml of the released model
    scale: str | None  # config/model/lm/model_scale/<scale>.yaml (audiocraft/grids/musicgen/*.py bind it)


SIZES = {
    "tiny": Size("large", None, None),  # musicgen.demo's weights
    "small": Size("large", "musicgen_base_32khz", "small"),  # musicgen_lm.yaml's default scale
    "melody": Size("melody", "musicgen_melody_32khz", "medium"),  # 1.5 B
    "large": Size("large", "musicgen_base_32khz", "large"),  # 3.3 B
}
# The released models' EnCodec: "EnCodec large ... stride of 640 ... rvq.n_q=4, rvq.bins=2048", as
# the solver configs describe compression_model_checkpoint //pretrained/facebook/encodec_32khz.
ENCODEC_CONFIG = "model/encodec/encodec_large_nq4_s640.yaml"
# google-t5/t5-base's config.json (not in audiocraft's sdist): the sizes every released LM conditions on.
T5_BASE = {"vocab_size": 32128, "d_kv": 64, "d_ff": 3072, "num_layers": 12, "num_heads": 12}
# Peak memory bandwidth by GPU name (vendor datasheets), GB/s; --bandwidth-gbs overrides.
GPU_BANDWIDTH_GBS = {
    "H200": 4800,
    "H100 NVL": 3900,
    "H100 80GB HBM3": 3350,  # SXM
    "H100 PCIe": 2000,
    "A100-SXM4-80GB": 2039,
    "A100 80GB PCIe": 1935,
    "A100-SXM4-40GB": 1555,
    "A100-PCIE-40GB": 1555,
    "L40S": 864,
    "A10G": 600,
    "L4": 300,
    "T4": 320,
    "RTX 4090": 1008,
}

# ---------------------------------------------------------------------------------------------
# Checkpoints


def bench_root(size: str) -> Path:
    """The weights root holding `size`'s checkpoints (under the configured weights root)."""
    return weights_root() / "bench" / size


def audiocraft_sdist(cache: Path) -> Path:
    """audiocraft's PyPI source archive for the installed version (it alone ships config/)."""
    from importlib.metadata import version

    release = version("audiocraft")
    path = cache / f"audiocraft-{release}.tar.gz"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        command += ["--no-build-isolation", f"audiocraft=={release}", "-d", str(cache)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode != 0 or not path.is_file():
            raise RuntimeError(f"could not download audiocraft {release}'s source archive:\n{result.stderr[-3000:]}")
    return path


def released_configs(size: str, sdist: Path) -> tuple[dict, dict]:
    """(LM xp.cfg, EnCodec xp.cfg) of `size`, composed from the sdist's config/ tree in Hydra's
    order (solver defaults, model/lm/default, musicgen_lm, the conditioner, the scale, the solver)
    over musicgen.demo's config of the same conditioning, interpolations resolved."""
    from omegaconf import OmegaConf

    from musicgen import demo

    spec = SIZES[size]
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]

        def load(relative: str):
            member = tar.extractfile(f"{top}/config/{relative}")
            if member is None:
                raise FileNotFoundError(f"{sdist.name} has no config/{relative}")
            return OmegaConf.create(member.read().decode())

        solver = load(f"solver/musicgen/{spec.solver}.yaml")
        musicgen_lm = load("model/lm/musicgen_lm.yaml")
        conditioner = _override(solver, "/conditioner") or _override(musicgen_lm, "/conditioner")
        layers = [
            load("solver/musicgen/default.yaml"),
            load("model/lm/default.yaml"),
            musicgen_lm,
            load(f"conditioner/{conditioner}.yaml"),
            load(f"model/lm/model_scale/{spec.scale}.yaml"),
            solver,
        ]
        codec_layers = [load("model/encodec/default.yaml"), load(ENCODEC_CONFIG)]
    expected = "chroma2music" if spec.version == "melody" else "text2music"
    if conditioner != expected:
        raise ValueError(f"{spec.solver} conditions with {conditioner}, expected {expected} for {size}")
    for layer in layers + codec_layers:
        layer.pop("defaults", None)
    lm = OmegaConf.merge(OmegaConf.create(demo.lm_config(spec.version)), *layers)
    top_level = {"sample_rate": lm.sample_rate, "channels": lm.channels}
    codec = OmegaConf.merge(OmegaConf.create(demo.CODEC_CONFIG), *codec_layers, top_level)
    lm_dict = OmegaConf.to_container(lm, resolve=True)
    codec_dict = OmegaConf.to_container(codec, resolve=True)
    transformer = lm_dict["transformer_lm"]
    if (transformer["n_q"], transformer["card"]) != (codec_dict["rvq"]["n_q"], codec_dict["rvq"]["bins"]):
        raise ValueError(f"{size}: the LM's n_q/card do not match EnCodec's n_q/bins")
    return lm_dict, codec_dict


def _override(config, group: str) -> str | None:
    """The option a config's `defaults` list picks for `group` (`override /group: option`)."""
    for item in config.get("defaults", []):
        if isinstance(item, str):
            continue
        for key, value in item.items():
            if key.replace("override ", "").strip() == group:
                return value
    return None


def ensure_checkpoints(size: str) -> Path:
    """The weights root of `size`, built once (in a child process) and then reused."""
    from importlib.metadata import version

    root = bench_root(size)
    marker = root / "bench.json"
    source = "musicgen.demo" if size == "tiny" else f"audiocraft-{version('audiocraft')}.tar.gz"
    if marker.is_file() and json.loads(marker.read_text()).get("source") == source:
        return root
    if size == "tiny":
        command = [sys.executable, "-m", "musicgen.bench", "build", size, str(root), ""]
    else:
        sdist = audiocraft_sdist(weights_root() / "bench" / "sdist")
        command = [sys.executable, "-m", "musicgen.bench", "build", size, str(root), str(sdist)]
    print(f"building {size} checkpoints under {root} (once) ...", flush=True)
    _run_child(command, _child_env(root, threads=os.cpu_count() or 1), BUILD_TIMEOUT, "building checkpoints")
    return root


def _build(size: str, root: Path, sdist: str) -> None:
    """Write `size`'s checkpoints under `root` (the child process of ensure_checkpoints)."""
    from musicgen import demo
    from musicgen.weights import htdemucs_path, model_dir

    root.mkdir(parents=True, exist_ok=True)
    if size == "tiny":
        demo.write_demo_weights(root)
        summary: dict[str, tp.Any] = {"size": size, "source": "musicgen.demo"}
    else:
        lm_cfg, codec_cfg = released_configs(size, Path(sdist))
        version = SIZES[size].version
        demo._write_t5(root, T5_BASE)
        if version == "melody":
            demo._write_htdemucs(htdemucs_path(root))  # the demo's: only loaded for text-only generation
        folder = model_dir(version, root)
        demo._save(demo._export_package(demo._build_codec(codec_cfg), codec_cfg, half=False), folder / CODEC_FILE)
        lm = demo._build_lm(lm_cfg)
        params = sum(p.numel() for p in lm.parameters())
        demo._save(demo._export_package(lm, lm_cfg, half=True), folder / LM_FILE)
        del lm
        summary = {
            "size": size,
            "source": Path(sdist).name,
            "model_version": version,
            "lm_params": params,
            "transformer_lm": {k: lm_cfg["transformer_lm"][k] for k in ("dim", "num_heads", "num_layers")},
            "t5": T5_BASE,
        }
    (root / "bench.json").write_text(json.dumps(summary, indent=2) + "\n")  # last: marks the build complete


# ---------------------------------------------------------------------------------------------
# The measured processes


class Probe:
    """Hooks on a loaded MusicGen recording what generate() does; the same on both sides.

    Instance attributes shadow `_generate_tokens` and `generate_audio` (called through self by
    every generate_* method) and the LM's `_sample_next_token` (one call per LM step).
    """

    def __init__(self, model, clock: tp.Callable[[], float]):
        self.tokens = None  # [B, K, T] int64, the last generation's
        self.audio = None  # [B, C, T] float, the last EnCodec decode
        self.tokens_s = 0.0
        self.decode_s = 0.0
        self.steps = 0
        generate_tokens, generate_audio, sample = (
            model._generate_tokens,
            model.generate_audio,
            model.lm._sample_next_token,
        )

        def timed_tokens(*args, **kwargs):
            start = clock()
            self.tokens = generate_tokens(*args, **kwargs)
            self.tokens_s += clock() - start
            return self.tokens

        def timed_decode(tokens):
            start = clock()
            self.audio = generate_audio(tokens)
            self.decode_s += clock() - start
            return self.audio

        def counted(*args, **kwargs):
            self.steps += 1
            return sample(*args, **kwargs)

        model._generate_tokens, model.generate_audio, model.lm._sample_next_token = timed_tokens, timed_decode, counted


def _measure_stock(spec: dict, clock_start: float) -> dict:
    import torch
    from audiocraft.data.audio import audio_write
    from audiocraft.models import MusicGen

    record: dict[str, tp.Any] = {"import_s": time.perf_counter() - clock_start}
    torch.set_num_threads(spec["threads"])
    clock = _clock(spec["device"])
    start = clock()
    model = MusicGen.get_pretrained(spec["model_dir"], device=spec["device"])
    record["setup_s"] = clock() - start
    record["setup_peak_rss_mb"], record["setup_rss_mb"] = _peak_rss_mb(), _rss_mb()
    probe = Probe(model, clock)

    start = clock()
    model.set_generation_params(duration=spec["duration"])
    torch.manual_seed(spec["seed"])
    generate_start = clock()
    wav = model.generate([spec["prompt"]])
    record["generate_s"] = clock() - generate_start
    audio_write(
        Path(spec["out_dir"]) / "stock", wav[0].cpu(), model.sample_rate, strategy="loudness", loudness_compressor=True
    )
    record["predict_s"] = clock() - start
    return _finish(record, spec, model, probe)


def _measure_ours(spec: dict, clock_start: float) -> dict:
    import torch

    import musicgen.models
    import musicgen.service
    from musicgen.cli import input_fields, load_predictor_class

    predictor_class = load_predictor_class()
    record: dict[str, tp.Any] = {"import_s": time.perf_counter() - clock_start}
    torch.set_num_threads(spec["threads"])
    clock = _clock(spec["device"])
    # setup() loads melody and large; the operator's switches make it load only the version under
    # test, on the device asked (stock loads one model too).
    os.environ[musicgen.models.VERSIONS_ENV] = spec["version"]
    os.environ[musicgen.models.DEVICE_ENV] = spec["device"]
    predictor = predictor_class()
    start = clock()
    predictor.setup()
    record["setup_s"] = clock() - start
    record["setup_peak_rss_mb"], record["setup_rss_mb"] = _peak_rss_mb(), _rss_mb()
    model = predictor.service.models.generator(spec["version"])
    probe = Probe(model, clock)
    generate = musicgen.service.generate

    def timed_generate(*args, **kwargs):
        begin = clock()
        result = generate(*args, **kwargs)
        record["generate_s"] = clock() - begin
        return result

    musicgen.service.generate = timed_generate
    inputs = {name: default for name, (_, default) in input_fields(predictor_class).items()}
    inputs.update(
        model_version=spec["version"],
        prompt=spec["prompt"],
        duration=spec["duration"],
        seed=spec["seed"],
        output_format="wav",
    )
    start = clock()
    predictor.predict(**inputs)
    record["predict_s"] = clock() - start
    return _finish(record, spec, model, probe)


def _clock(device: str) -> tp.Callable[[], float]:
    import torch

    if device == "cuda":
        return lambda: (torch.cuda.synchronize(), time.perf_counter())[1]
    return time.perf_counter


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mb() -> float | None:
    """The resident set now (Linux), file-backed pages such as memory-mapped checkpoints included."""
    try:
        line = next(line for line in open("/proc/self/status") if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 1024


def _finish(record: dict, spec: dict, model, probe: Probe) -> dict:
    """Add the probes' figures to `record`; write the tokens and the decoded audio for the parent."""
    import numpy as np
    import torch

    out = Path(spec["out_dir"])
    np.save(out / "tokens.npy", probe.tokens.cpu().numpy())
    np.save(out / "audio.npy", probe.audio.float().cpu().numpy())
    lm_bytes = sum(p.numel() * p.element_size() for p in model.lm.parameters())
    record.update(
        tokens_s=probe.tokens_s,
        decode_s=probe.decode_s,
        steps=probe.steps,
        frames=int(probe.tokens.shape[-1]),
        audio_s=probe.audio.shape[-1] / model.sample_rate,
        lm_params=sum(p.numel() for p in model.lm.parameters()),
        lm_dtype=str(next(model.lm.parameters()).dtype).replace("torch.", ""),
        lm_weight_bytes=lm_bytes,
        peak_rss_mb=_peak_rss_mb(),
        torch_threads=torch.get_num_threads(),
    )
    if spec["device"] == "cuda":
        record["gpu"] = torch.cuda.get_device_name()
        record["gpu_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        record["gpu_peak_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    return record


def _child_main(argv: list[str]) -> int:
    clock_start = time.perf_counter()
    if argv[0] == "build":
        _build(argv[1], Path(argv[2]), argv[3])
        return 0
    spec = json.loads(Path(argv[1]).read_text())
    measure = _measure_stock if spec["impl"] == "audiocraft" else _measure_ours
    record = measure(spec, clock_start)
    Path(spec["result"]).write_text(json.dumps(record))
    return 0


# ---------------------------------------------------------------------------------------------
# The parent: orchestration, comparison, report


def _child_env(root: Path, threads: int) -> dict[str, str]:
    """The same environment for both sides: caches at `root`, hub offline, `threads` threads."""
    env = dict(os.environ)
    for name in ("HF_HUB_CACHE", "TRANSFORMERS_CACHE", "HUGGINGFACE_HUB_CACHE"):
        env.pop(name, None)
    env.update(
        MUSICGEN_WEIGHTS=str(root),
        HF_HOME=str(root / HF_DIR),
        TORCH_HOME=str(root / TORCH_DIR),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
    )
    return env


def _run_child(command: list[str], env: dict[str, str], timeout: float, what: str) -> float:
    """Run a child to completion; its wall time in seconds. Raises with its output on failure."""
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-6000:]}"
        )
    return time.perf_counter() - start


def machine() -> dict[str, tp.Any]:
    """What the figures were taken on."""
    cpu = platform.processor()
    memory_gb = None
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
        memory_gb = round(kib / 2**20, 1)
    except (OSError, StopIteration):
        pass
    from importlib.metadata import version

    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gb": memory_gb,
        "python": platform.python_version(),
        "torch": version("torch"),
        "audiocraft": version("audiocraft"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def run(
    size: str,
    device: str,
    duration: int,
    repeats: int,
    threads: int,
    seed: int = DEFAULT_SEED,
    prompt: str = DEFAULT_PROMPT,
    bandwidth_gbs: float | None = None,
) -> dict:
    """Run the benchmark; return the report (records, summary, machine)."""
    root = ensure_checkpoints(size)
    spec = SIZES[size]
    env = _child_env(root, threads)
    host = machine()
    records = []
    reference = None  # the first stock run's tokens and decoded audio
    with tempfile.TemporaryDirectory(prefix="musicgen-bench-") as scratch:
        for repeat in range(repeats):
            for impl in IMPLS:
                out = Path(scratch) / f"{impl}-{repeat}"
                out.mkdir()
                child = {
                    "impl": impl,
                    "size": size,
                    "version": spec.version,
                    "device": device,
                    "duration": duration,
                    "seed": seed,
                    "prompt": prompt,
                    "threads": threads,
                    "model_dir": str(root / MODEL_DIRS[spec.version]),
                    "out_dir": str(out),
                    "result": str(out / "result.json"),
                }
                (out / "spec.json").write_text(json.dumps(child))
                command = [sys.executable, "-m", "musicgen.bench", "child", str(out / "spec.json")]
                print(f"[{repeat + 1}/{repeats}] {impl} ...", flush=True)
                load_average = [round(x, 2) for x in os.getloadavg()]  # 1, 5, 15 min, before the run
                process_s = _run_child(command, env, CHILD_TIMEOUT, f"{impl} run {repeat + 1}")
                record = {
                    "impl": impl,
                    "size": size,
                    "model_version": spec.version,
                    "device": device,
                    "duration": duration,
                    "repeat": repeat,
                    "seed": seed,
                    "prompt": prompt,
                    "threads": threads,
                    **json.loads((out / "result.json").read_text()),
                    "process_s": process_s,
                    "load_average": load_average,
                }
                _derive(record, bandwidth_gbs)
                reference = reference or _load_outputs(out)
                record.update(_compare(_load_outputs(out), reference))
                record["machine"] = host
                records.append(record)
    host["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return {"machine": host, "records": records, "summary": summarize(records)}


def _derive(record: dict, bandwidth_gbs: float | None) -> None:
    """Rates and the memory-bandwidth floor of one record."""
    record["cold_start_s"] = record["import_s"] + record["setup_s"]
    record["rtf"] = record["generate_s"] / record["audio_s"]
    record["steps_per_s"] = record["steps"] / record["tokens_s"]
    record["step_ms"] = 1000 * record["tokens_s"] / record["steps"]
    record["peak_mem_mb"] = record["peak_rss_mb"]
    if record["device"] == "cuda":
        bandwidth = bandwidth_gbs or next(
            (value for name, value in GPU_BANDWIDTH_GBS.items() if name in record.get("gpu", "")), None
        )
        record["gpu_bandwidth_gbs"] = bandwidth
        if bandwidth:
            # Every LM step reads every weight once (both halves of the guidance batch share them).
            record["floor_step_ms"] = 1000 * record["lm_weight_bytes"] / (bandwidth * 1e9)
            record["step_over_floor"] = record["step_ms"] / record["floor_step_ms"]


def _load_outputs(out: Path) -> tuple:
    """(tokens [B, K, T], decoded audio [B, C, T]) a child wrote, as numpy arrays."""
    import numpy as np

    return np.load(out / "tokens.npy"), np.load(out / "audio.npy")


def _compare(outputs: tuple, reference: tuple) -> dict:
    """Whether a run's tokens and decoded audio equal the reference run's (bit for bit)."""
    import numpy as np

    (tokens, audio), (ref_tokens, ref_audio) = outputs, reference
    result = {
        "tokens_identical": bool(tokens.shape == ref_tokens.shape and np.array_equal(tokens, ref_tokens)),
        "audio_identical": bool(audio.shape == ref_audio.shape and np.array_equal(audio, ref_audio)),
    }
    if not result["tokens_identical"] and tokens.shape == ref_tokens.shape:
        result["first_differing_frame"] = int(np.argwhere((tokens != ref_tokens).any(axis=(0, 1)))[0][0])
    return result


FIELDS = ("cold_start_s", "setup_s", "generate_s", "predict_s", "rtf", "steps_per_s", "step_ms", "peak_mem_mb")


def summarize(records: list[dict]) -> dict:
    """Medians per implementation and the ratio ours / stock of each."""
    medians = {}
    for impl in IMPLS:
        rows = [r for r in records if r["impl"] == impl]
        medians[impl] = {field: statistics.median(r[field] for r in rows) for field in FIELDS}
        if rows and rows[0]["device"] == "cuda":
            medians[impl]["gpu_peak_allocated_mb"] = statistics.median(r["gpu_peak_allocated_mb"] for r in rows)
            if rows[0].get("floor_step_ms"):
                medians[impl]["floor_step_ms"] = rows[0]["floor_step_ms"]
    ratio = {field: medians["musicgen"][field] / medians["audiocraft"][field] for field in medians["musicgen"]}
    return {
        "median": medians,
        "ratio_ours_over_stock": ratio,
        "tokens_identical": all(r["tokens_identical"] for r in records),
        "audio_identical": all(r["audio_identical"] for r in records),
    }


def table(report: dict) -> str:
    """The short human-readable summary."""
    first = report["records"][0]
    median, ratio = report["summary"]["median"], report["summary"]["ratio_ours_over_stock"]
    fields = [f for f in FIELDS if f != "predict_s"] + [f for f in median["musicgen"] if f not in FIELDS]
    lines = [
        f"{first['size']} on {first['device']}, {first['duration']} s of audio, "
        f"{len(report['records']) // 2} runs each, {first['threads']} threads; medians",
        f"{'':<12}" + "".join(f"{field:>16}" for field in fields),
    ]
    for impl in IMPLS:
        lines.append(f"{impl:<12}" + "".join(f"{median[impl][field]:>16.3f}" for field in fields))
    lines.append(f"{'ours/stock':<12}" + "".join(f"{ratio[field]:>16.3f}" for field in fields))
    same = report["summary"]["tokens_identical"]
    lines.append(
        f"tokens identical (same seed): {'yes' if same else 'NO'}; "
        f"decoded audio identical: {'yes' if report['summary']['audio_identical'] else 'NO'}"
    )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=list(SIZES), default="tiny", help="model architecture (default: tiny)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default: cpu")
    parser.add_argument("--duration", type=int, default=1, help="seconds of audio to generate (default: 1)")
    parser.add_argument("--repeats", type=int, default=3, help="processes per implementation (default: 3)")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch threads, both sides (default: all cores)"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"default: {DEFAULT_SEED}")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"default: {DEFAULT_PROMPT!r}")
    parser.add_argument("--bandwidth-gbs", type=float, help="GPU memory bandwidth for the floor (default: datasheet)")
    parser.add_argument("--json", help="write the records and the summary to this file")


def main(args: argparse.Namespace) -> int:
    if args.duration < 1 or args.repeats < 1 or args.threads < 1:
        raise InputError("bench: --duration, --repeats and --threads must be at least 1.")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InputError("bench: --device cuda, but torch sees no CUDA device on this machine.")
    report = run(
        args.size, args.device, args.duration, args.repeats, args.threads, args.seed, args.prompt, args.bandwidth_gbs
    )
    report["command"] = (
        f"python -m musicgen bench --size {args.size} --device {args.device} --duration {args.duration} "
        f"--repeats {args.repeats} --threads {args.threads} --seed {args.seed} --prompt {shlex.quote(args.prompt)}"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    return 0 if report["summary"]["tokens_identical"] else 1


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
