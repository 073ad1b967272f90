"""The side-by-side benchmark: stock audiocraft and our Predictor on the same random checkpoints.

`python -m tooling.bench --size S --device D --duration SECONDS` runs, interleaved (stock, ours,
ours with the stock loop, stock, ...) and each in a fresh process (tooling.bench.child), with
the same prompt, seed and thread count:

    audiocraft           what a user of audiocraft writes: MusicGen.get_pretrained(dir),
                         set_generation_params(duration=...), torch.manual_seed(seed),
                         generate([prompt]), audio_write(..., strategy="loudness", loudness_compressor=True)
    musicgen             predict.py's Predictor: setup(), then one prediction through its service
                         with predict()'s defaults and (model_version, prompt, duration, seed); our
                         decoding loop (musicgen.tokens)
    musicgen-stock-loop  the same with MUSICGEN_TOKEN_LOOP=audiocraft: audiocraft's loop in our service

Both processes record the same probes (hooks on the loaded MusicGen: token generation time, decode
time, LM steps, the tokens themselves), so the two sides are timed by the same code:

    import_s     importing the libraries (stock: audiocraft; ours: predict.py and musicgen.serving.service)
    setup_s      get_pretrained() / Predictor.setup()
    generate_s   model.generate([prompt]) / musicgen.generate.generate() as the service times it
                 (Prediction.generate_seconds): seeding, sampling the tokens and the EnCodec
                 decode (stock's generate() decodes too); the process's first generation
    generate_warm_s  the same generation again in the same process (same seed, same tokens): what a
                 server's later requests take, past one-time costs such as oneDNN building its
                 convolutions for a new output length (about 0.1 s for 8 s of audio here)
    predict_s    stock: set_generation_params + seed + generate + audio_write; ours: the service's
                 predict(Request(...))
    tokens_s, decode_s, steps  inside generate: the LM sampling loop, EnCodec, LM steps
    warm_step_ms     step_ms of the second generation

The checkpoints (sizes tiny, small, melody, large) are tooling.bench.checkpoints'. This module
is light to import (no torch, no audiocraft, no numpy): the CLI imports it at every start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import tempfile
import typing as tp
from importlib.metadata import version as package_version
from pathlib import Path

from musicgen import atomic_files
from musicgen.errors import InputError
from musicgen.weights.layout import MODEL_DIRS
from tooling.bench.checkpoints import SIZES, ensure_checkpoints
from tooling.bench.processes import child_command, child_environment, run_child

IMPLS = ("audiocraft", "musicgen", "musicgen-stock-loop")  # stock first in every round
OURS = IMPLS[1:]
LOOP_OF_SIDE = {"musicgen": "musicgen", "musicgen-stock-loop": "audiocraft"}  # each side's MUSICGEN_TOKEN_LOOP
DEFAULT_PROMPT = "calm piano"
DEFAULT_SEED = 7
CHILD_TIMEOUT = 3 * 3600  # s; one process (load + one generation), a large model at 30 s on a CPU included
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
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gb": memory_gb,
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "audiocraft": package_version("audiocraft"),
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
    sides: tuple[str, ...] = IMPLS,
    warm: bool = True,
) -> dict:
    """Run the benchmark; return the report (records, summary, machine). `sides`: which of IMPLS
    (stock audiocraft always first); `warm`: also time a second generation in each process."""
    root = ensure_checkpoints(size)
    spec = SIZES[size]
    env = child_environment(root, threads)
    host = machine()
    records = []
    reference = None  # the first stock run's tokens and decoded audio
    with tempfile.TemporaryDirectory(prefix="musicgen-bench-") as scratch:
        for repeat in range(repeats):
            for impl in sides:
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
                    "loop": LOOP_OF_SIDE.get(impl),
                    "warm": warm,
                    "model_dir": str(root / MODEL_DIRS[spec.version]),
                    "out_dir": str(out),
                    "result": str(out / "result.json"),
                }
                atomic_files.write_text(out / "spec.json", json.dumps(child))
                command = child_command("measure", str(out / "spec.json"))
                print(f"[{repeat + 1}/{repeats}] {impl} ...", flush=True)
                load_average = [round(x, 2) for x in os.getloadavg()]  # 1, 5, 15 min, before the run
                process_s = run_child(command, env, CHILD_TIMEOUT, f"{impl} run {repeat + 1}")
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
                derive(record, bandwidth_gbs)
                reference = reference or load_outputs(out)
                record.update(compare(load_outputs(out), reference))
                record["machine"] = host
                records.append(record)
    host["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return {"machine": host, "records": records, "summary": summarize(records)}


def derive(record: dict, bandwidth_gbs: float | None) -> None:
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


def load_outputs(out: Path) -> tuple:
    """(tokens [B, K, T], decoded audio [B, C, T]) a child wrote, as numpy arrays."""
    import numpy as np  # here, not at the top: the CLI imports this module at every start

    return np.load(out / "tokens.npy"), np.load(out / "audio.npy")


def compare(outputs: tuple, reference: tuple) -> dict:
    """Whether a run's tokens and decoded audio equal the reference run's (bit for bit)."""
    import numpy as np  # see load_outputs

    (tokens, audio), (ref_tokens, ref_audio) = outputs, reference
    result = {
        "tokens_identical": bool(tokens.shape == ref_tokens.shape and np.array_equal(tokens, ref_tokens)),
        "audio_identical": bool(audio.shape == ref_audio.shape and np.array_equal(audio, ref_audio)),
    }
    if not result["tokens_identical"] and tokens.shape == ref_tokens.shape:
        result["first_differing_frame"] = int(np.argwhere((tokens != ref_tokens).any(axis=(0, 1)))[0][0])
    return result


FIELDS = (
    "cold_start_s",
    "setup_s",
    "generate_s",
    "generate_warm_s",
    "predict_s",
    "rtf",
    "steps_per_s",
    "step_ms",
    "warm_step_ms",
    "peak_mem_mb",
)


RATIO_KEYS = {"musicgen": "ratio_ours_over_stock", "musicgen-stock-loop": "ratio_stock_loop_over_stock"}
RATIO_LABELS = {"musicgen": "ours/stock", "musicgen-stock-loop": "stock-loop/stock"}


def sides_of(records: list[dict]) -> list[str]:
    return [impl for impl in IMPLS if any(r["impl"] == impl for r in records)]


def summarize(records: list[dict]) -> dict:
    """Medians per side and the ratio of each of ours over stock."""
    medians = {}
    for impl in sides_of(records):
        rows = [r for r in records if r["impl"] == impl]
        medians[impl] = {field: statistics.median(r[field] for r in rows) for field in FIELDS if field in rows[0]}
        if rows[0]["device"] == "cuda":
            medians[impl]["gpu_peak_allocated_mb"] = statistics.median(r["gpu_peak_allocated_mb"] for r in rows)
            if rows[0].get("floor_step_ms"):
                medians[impl]["floor_step_ms"] = rows[0]["floor_step_ms"]
    summary: dict = {"median": medians}
    for impl in sides_of(records)[1:]:
        summary[RATIO_KEYS[impl]] = {
            field: medians[impl][field] / medians["audiocraft"][field] for field in medians[impl]
        }
    summary["tokens_identical"] = all(r["tokens_identical"] and r.get("warm_tokens_identical", True) for r in records)
    summary["audio_identical"] = all(r["audio_identical"] for r in records)
    return summary


def table(report: dict) -> str:
    """The short human-readable summary."""
    records = report["records"]
    first, sides = records[0], sides_of(records)
    summary = report["summary"]
    median = summary["median"]
    fields = [f for f in FIELDS if f != "predict_s" and f in median["audiocraft"]]
    fields += [f for f in median["audiocraft"] if f not in FIELDS]
    lines = [
        f"{first['size']} on {first['device']}, {first['duration']} s of audio, "
        f"{len(records) // len(sides)} runs each, {first['threads']} threads; medians",
        f"{'':<20}" + "".join(f"{field:>16}" for field in fields),
    ]
    for impl in sides:
        lines.append(f"{impl:<20}" + "".join(f"{median[impl][field]:>16.3f}" for field in fields))
    for impl in sides[1:]:
        ratio = summary[RATIO_KEYS[impl]]
        lines.append(f"{RATIO_LABELS[impl]:<20}" + "".join(f"{ratio[field]:>16.3f}" for field in fields))
    same = summary["tokens_identical"]
    lines.append(
        f"tokens identical (same seed): {'yes' if same else 'NO'}; "
        f"decoded audio identical: {'yes' if summary['audio_identical'] else 'NO'}"
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
    parser.add_argument(
        "--sides",
        default=",".join(IMPLS),
        help=f"comma-separated sides to run, stock first (default: {','.join(IMPLS)})",
    )
    parser.add_argument(
        "--no-warm", action="store_true", help="skip the second generation per process (halves a long run)"
    )
    parser.add_argument("--json", help="write the records and the summary to this file")


def main(args: argparse.Namespace) -> int:
    if args.duration < 1 or args.repeats < 1 or args.threads < 1:
        raise InputError("bench: --duration, --repeats and --threads must be at least 1.")
    sides = tuple(side.strip() for side in args.sides.split(",") if side.strip())
    if not sides or sides[0] != "audiocraft" or not set(sides) <= set(IMPLS) or len(set(sides)) != len(sides):
        raise InputError(f"bench: --sides={args.sides!r}; give audiocraft first, then any of {', '.join(OURS)}.")
    if args.device == "cuda":
        import torch  # only to ask for a GPU: the runs themselves happen in child processes

        if not torch.cuda.is_available():
            raise InputError("bench: --device cuda, but torch sees no CUDA device on this machine.")
    report = run(
        args.size,
        args.device,
        args.duration,
        args.repeats,
        args.threads,
        args.seed,
        args.prompt,
        args.bandwidth_gbs,
        sides,
        not args.no_warm,
    )
    report["command"] = (
        f"python -m tooling.bench --size {args.size} --device {args.device} --duration {args.duration} "
        f"--repeats {args.repeats} --threads {args.threads} --seed {args.seed} --prompt {shlex.quote(args.prompt)}"
        + (f" --sides {','.join(sides)}" if sides != IMPLS else "")
        + (" --no-warm" if args.no_warm else "")
    )
    if args.json:
        atomic_files.write_text(Path(args.json), json.dumps(report, indent=2) + "\n")
    print(table(report))
    return 0 if report["summary"]["tokens_identical"] else 1
