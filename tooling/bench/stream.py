"""The streaming model against the published one: time to first audio, total time, chunk agreement.

    python -m tooling.bench.stream --size small [--duration 30] [--threads 1] [--json FILE]
    python -m tooling.bench.stream --size demo [--json FILE]

In one process, interleaved, on the same service and seed: the published path (service.predict)
and the streaming path (service.predict with chunks), --repeats times each; for each: the time to
the first audio (the first chunk's file written; for the published path, its one file) and the
whole wall time, and the streaming path's final file compared byte for byte with the published
one. On the demo weights (--size demo), also each mode's chunks against their span of the final
piece: the signal-to-noise ratio after one gain (least squares), the lowest per mode. Prints the
figures as JSON; exits 1 when a final file differs from the published one. A benchmark run by command (docs/benchmarks.md,
docs/streaming.md), never a test.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

from musicgen import atomic_files
from tooling.signals import scale


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """The signal-to-noise ratio of `estimate` against `reference` ([T, C]) after the one gain that
    fits it best (least squares): how far the two differ beyond a level."""
    gain = float((reference * estimate).sum() / max((estimate * estimate).sum(), 1e-30))
    error = reference - gain * estimate
    return 10 * math.log10(float((reference * reference).sum()) / max(float((error * error).sum()), 1e-30))


def read(path: Path) -> np.ndarray:
    samples, _ = soundfile.read(io.BytesIO(Path(path).read_bytes()), always_2d=True)
    return samples


def agreement(chunks: list[np.ndarray], final: np.ndarray) -> list[float]:
    """Each chunk [T, C] against its span of the final piece, in order: SNR in dB after one gain."""
    figures, start = [], 0
    for chunk in chunks:
        figures.append(snr_db(final[start : start + len(chunk)], chunk))
        start += len(chunk)
    return figures


def time_both(service, request, repeats: int) -> dict:
    """Interleaved published and streaming runs of `request`: their times and whether the finals agree."""
    published, streaming, identical = [], [], True
    for _ in range(repeats):
        start = time.perf_counter()
        plain = service.predict(request).path.read_bytes()  # (read now: the next prediction removes it)
        published.append({"first_audio_s": time.perf_counter() - start, "total_s": time.perf_counter() - start})
        arrivals: list[float] = []
        start = time.perf_counter()
        streamed = service.predict(request, on_chunk=lambda _, arrivals=arrivals, start=start: arrivals.append(
            time.perf_counter() - start))  # fmt: skip
        streaming.append(
            {"first_audio_s": arrivals[0], "total_s": time.perf_counter() - start, "chunks": len(arrivals)}
        )
        identical &= streamed.path.read_bytes() == plain

    def median(runs: list[dict], key: str) -> float:
        return round(float(np.median([run[key] for run in runs])), 3)

    return {
        "published": {key: median(published, key) for key in ("first_audio_s", "total_s")},
        "streaming": {key: median(streaming, key) for key in ("first_audio_s", "total_s")},
        "chunks": streaming[0]["chunks"],
        "final_identical": identical,
    }


MODES = {  # name -> the request's inputs (input_audio: the melody file)
    "text 20 s": {"prompt": "calm", "duration": 20, "seed": 1},
    "text 45 s (two windows)": {"model_version": "large", "prompt": "long", "duration": 45, "seed": 2},
    "melody": {"prompt": "strings", "duration": 10, "seed": 3, "input_audio": True},
    "continuation": {"model_version": "large", "prompt": "on", "duration": 8, "seed": 4, "input_audio": True,
                     "continuation": True},
    "stereo": {"model_version": "stereo-large", "prompt": "wide", "duration": 10, "seed": 5},
    "mp3": {"prompt": "calm", "duration": 10, "seed": 6, "output_format": "mp3"},
    "MultiBand Diffusion (EnCodec previews)": {"prompt": "calm", "duration": 6, "seed": 7, "multi_band_diffusion": True},
}  # fmt: skip


def mode_agreement(service, melody: Path) -> dict:
    """Per mode on `service`: the chunks' lowest and median SNR against the final piece."""
    from musicgen.request import Request

    figures = {}
    for name, inputs in MODES.items():
        inputs = {**inputs, "input_audio": melody} if inputs.get("input_audio") else inputs
        chunks: list[np.ndarray] = []
        final = service.predict(Request(**inputs), on_chunk=lambda path, chunks=chunks: chunks.append(read(path))).path
        snrs = agreement(chunks, read(final))
        figures[name] = {
            "chunks": len(chunks),
            "lowest_db": round(min(snrs), 1),
            "median_db": round(float(np.median(snrs)), 1),
        }
    return figures


def melody_file(folder: Path) -> Path:
    rate = 32000
    path = folder / "melody.wav"
    soundfile.write(path, scale(6, rate), rate)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tooling.bench.stream", description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="small", help="demo, or a bench checkpoint (tooling.bench.checkpoints)")
    parser.add_argument("--duration", type=int, default=30, help="seconds of music timed (default 30)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    report: dict = {"command": f"python -m tooling.bench.stream --size {args.size} --duration {args.duration} "
                               f"--threads {args.threads} --repeats {args.repeats}"}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="musicgen-stream-bench-") as scratch:
        if args.size == "demo":
            root = Path(scratch) / "demo"
            version = "melody"
        else:
            from tooling.bench.checkpoints import SIZES, ensure_checkpoints

            root, version = ensure_checkpoints(args.size), SIZES[args.size].version
        from musicgen.boot import boot

        settings = boot(root)  # (one weights root per process: the Hugging Face caches bind to it)
        import torch

        from musicgen.request import Request
        from musicgen.serving.service import MusicGenService

        torch.set_num_threads(args.threads)
        if args.size == "demo":
            from musicgen.demo.builders import write_demo_weights

            write_demo_weights(root)
        versions = ("melody", "large") if args.size == "demo" else (version,)
        service = MusicGenService.load(settings.replace(device="cpu", model_versions=versions))
        request = Request(model_version=version, prompt="calm piano", duration=args.duration, seed=1)
        report[f"{args.size}, {args.duration} s"] = time_both(service, request, args.repeats)
        if args.size == "demo":
            report["agreement on the demo weights"] = mode_agreement(service, melody_file(Path(scratch)))
    print(json.dumps(report, indent=2))
    if args.json:
        atomic_files.write_text(args.json, json.dumps(report, indent=2) + "\n")
    timed = [value for key, value in report.items() if isinstance(value, dict) and "final_identical" in value]
    return 0 if all(value["final_identical"] for value in timed) else 1


if __name__ == "__main__":
    sys.exit(main())
