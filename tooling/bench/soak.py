"""A soak: hundreds of mixed predictions through the real server, the worker's resident memory after each.

    python -m tooling.bench.soak --predictions 300 --json outputs/soak.json

Starts `python -m musicgen serve` on the demo weights (or --weights-root) and sends a seeded mix
of the requests whose buffers depend on the request: every model version, durations from 1 to 60 s,
melodies and continuations of long inputs with windows of every length (input_audio as URLs of a
local file server), encode-decode of minutes of audio, MultiBand Diffusion, mp3, every
normalization. After each answer it reads the worker's VmRSS; the report gives it after setup, at
the end of the warm-up, and after it: the least-squares slope (MB per 100 predictions) and the
medians of the first and last quarter, against the bounds (exit status 1 past either). A benchmark
run by command, not part of the test suite: docs/benchmarks.md has its figures.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
import soundfile

from musicgen.models.memory import MB
from musicgen.settings import read_settings
from musicgen.versions import GENERATING as GENERATING_VERSIONS
from tooling.loopback import LoopbackServer
from tooling.server_process import ServerProcess

START_TIMEOUT = 600  # s
PREDICT_TIMEOUT = 600  # s
WARMUP = 30  # predictions before the trend is measured (every kind has run by then)
# The bounds (docs/benchmarks.md): the serving code before its memory fixes grew 103 MB per 100
# predictions and +90 MB (light profile, 200 predictions, warm-up 60); after them 9 MB per 100 and
# +11 MB: what is left is high-water marks of sizes met for the first time, not growth per prediction.
MAX_SLOPE_MB_PER_100 = 25.0
MAX_RISE_MB = 40.0  # median of the last quarter over the first quarter's
GENERATING = tuple(GENERATING_VERSIONS)
MELODIC = tuple(name for name, version in GENERATING_VERSIONS.items() if version.melody)


@dataclass(frozen=True)
class Profile:
    """What a soak's requests may ask for."""

    longest: int  # seconds of new audio at most (a uniform draw from 1)
    inputs: dict[str, tuple[int, int, int]]  # file name -> (seconds, Hz, channels); the first is the melody's
    mbd_longest: int  # seconds at most of a MultiBand Diffusion request
    encode_decode_mbd: bool  # encode-decode of the inputs through MBD too (minutes of diffusion on a CPU)


PROFILES = {
    "full": Profile(60, {"one-minute.wav": (60, 44100, 2), "three-minutes.flac": (180, 48000, 2)}, 4, True),
    # The tests': the same kinds of request, lighter (200 in about ten minutes on a 2-core CPU).
    "light": Profile(24, {"twelve-seconds.wav": (12, 44100, 2), "twenty-seconds.flac": (20, 48000, 2)}, 2, False),
}


def write_inputs(folder: Path, profile: Profile) -> None:
    """The profile's input files in `folder`: a scale of sines (a melody to follow, music to
    continue or round-trip)."""
    for name, (seconds, rate, channels) in profile.inputs.items():
        t = np.arange(seconds * rate) / rate
        tone = 0.3 * np.sin(2 * np.pi * np.cumsum(220 * 2 ** (np.floor(t * 2) % 12 / 12)) / rate)
        soundfile.write(folder / name, np.stack([tone] * channels, axis=1), rate)


def workload(count: int, seed: int, files_url: str, profile: Profile) -> list[dict]:
    """`count` prediction inputs, the same for the same seed, the profile's files served under `files_url`."""
    rng = random.Random(seed)
    names = list(profile.inputs)
    source, window = f"{files_url}/{names[0]}", profile.inputs[names[0]][0]
    requests_ = []
    for index in range(count):
        kind = ("text", "text", "text", "melody", "continuation", "encode-decode", "mbd")[index % 7]
        duration = rng.randint(1, profile.longest)
        request: dict = {"seed": index, "output_format": rng.choice(("wav", "mp3"))}
        request["normalization_strategy"] = rng.choice(("loudness", "clip", "peak", "rms"))
        if kind == "text":
            request |= {"model_version": rng.choice(GENERATING), "prompt": "soak", "duration": duration}
        elif kind == "melody":
            request |= {"model_version": rng.choice(MELODIC), "prompt": "soak", "input_audio": source}
            request["duration"] = min(duration, 30)
        elif kind == "continuation":
            start = rng.randint(0, window // 2)
            request |= {"model_version": rng.choice(GENERATING), "prompt": "soak", "input_audio": source}
            request |= {"continuation": True, "continuation_start": start}
            end = rng.randint(start + 1, min(window, start + 30))  # a window is at most the LM's 30 s context
            request |= {"continuation_end": end, "duration": min(duration, 20)}
        elif kind == "encode-decode":
            request |= {"model_version": "encode-decode", "input_audio": f"{files_url}/{rng.choice(names)}"}
            request["multi_band_diffusion"] = profile.encode_decode_mbd and rng.random() < 0.2
        else:
            request |= {"model_version": rng.choice(GENERATING), "prompt": "soak", "multi_band_diffusion": True}
            request["duration"] = rng.randint(1, profile.mbd_longest)
        requests_.append(request)
    return requests_


def soak(server: ServerProcess, inputs: list[dict], progress=None) -> list[dict]:
    """Send each request in turn; after each answer, the worker's RSS (MB) and what was asked
    (each record also given to `progress`, if set)."""
    records = []
    session = requests.Session()
    for index, request in enumerate(inputs):
        start = time.perf_counter()
        response = session.post(f"{server.url}/predictions", json={"input": request}, timeout=PREDICT_TIMEOUT)
        answer = response.json()
        if response.status_code != 200 or answer.get("status") != "succeeded":
            raise RuntimeError(f"prediction {index} {request} failed: {response.status_code} {answer.get('error')}")
        records.append(
            {
                "index": index,
                "rss_mb": round(server.worker_rss() / MB, 1),
                "seconds": round(time.perf_counter() - start, 2),
                "model_version": request["model_version"],
                "duration": request.get("duration"),
                "mbd": request.get("multi_band_diffusion", False),
                "input": request.get("input_audio", "").rsplit("/", 1)[-1] or None,
            }
        )
        if progress:
            progress(records[-1])
    return records


def summary(setup_mb: float, records: list[dict], warmup: int = WARMUP) -> dict:
    """RSS after setup, at the end of the warm-up, and its trend over the predictions after it."""
    after = records[warmup:]
    rss = [record["rss_mb"] for record in after]
    slope = float(np.polyfit(np.arange(len(rss)), rss, 1)[0]) if len(rss) > 1 else 0.0
    quarter = max(1, len(rss) // 4)
    return {
        "predictions": len(records),
        "warmup": warmup,
        "rss_after_setup_mb": setup_mb,
        "rss_after_warmup_mb": records[warmup - 1]["rss_mb"] if len(records) >= warmup else None,
        "rss_max_after_warmup_mb": max(rss) if rss else None,
        "rss_last_mb": records[-1]["rss_mb"] if records else None,
        "slope_mb_per_100_predictions": round(slope * 100, 1),
        "median_first_quarter_mb": statistics.median(rss[:quarter]) if rss else None,
        "median_last_quarter_mb": statistics.median(rss[-quarter:]) if rss else None,
        "seconds": round(sum(record["seconds"] for record in records), 1),
    }


def _print_progress(total: int, record: dict) -> None:
    print(
        f"{record['index'] + 1}/{total} {record['rss_mb']} MB {record['seconds']} s {record['model_version']}"
        f" {record['duration'] or ''}{' mbd' if record['mbd'] else ''} {record['input'] or ''}",
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tooling.bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--predictions", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="the workload's seed")
    parser.add_argument("--weights-root", type=Path, help="default: the configured root's demo/ (written if missing)")
    parser.add_argument(
        "--profile", choices=list(PROFILES), default="full", help="full (the figure), light (a quicker mix)"
    )
    parser.add_argument("--warmup", type=int, default=WARMUP, help=f"predictions before the trend (default {WARMUP})")
    parser.add_argument("--json", type=Path, help="also write the summary and every record here")
    args = parser.parse_args(argv)
    root = args.weights_root or read_settings().weights_root / "demo"
    if not (root / "musicgen-melody").is_dir():
        from musicgen.demo.builders import write_demo_weights

        write_demo_weights(root)
    with tempfile.TemporaryDirectory(prefix="musicgen-soak-") as scratch:
        folder = Path(scratch)
        (folder / "files").mkdir()
        profile = PROFILES[args.profile]
        write_inputs(folder / "files", profile)
        files = LoopbackServer(directory=folder / "files")
        server = ServerProcess(root, folder / "server.log", env={"TMPDIR": scratch})
        try:
            server.wait_for({"READY"}, START_TIMEOUT)
            setup_mb = round(server.worker_rss() / MB, 1)
            inputs = workload(args.predictions, args.seed, files.url, profile)
            records = soak(server, inputs, functools.partial(_print_progress, len(inputs)))
        finally:
            server.stop()
            files.close()
    report = {"summary": summary(setup_mb, records, args.warmup), "records": records}
    figures = report["summary"]
    rise = figures["median_last_quarter_mb"] - figures["median_first_quarter_mb"]
    figures["flat"] = figures["slope_mb_per_100_predictions"] < MAX_SLOPE_MB_PER_100 and rise < MAX_RISE_MB
    print(json.dumps(figures, indent=2))
    print(
        f"slope {figures['slope_mb_per_100_predictions']} MB per 100 (bound {MAX_SLOPE_MB_PER_100:g}), rise "
        f"{rise:.1f} MB (bound {MAX_RISE_MB:g}): {'flat' if figures['flat'] else 'GROWING'}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if figures["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
