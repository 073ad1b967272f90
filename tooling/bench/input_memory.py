"""The worker's peak memory for the largest inputs it accepts, through the real server.

    python -m tooling.bench.input_memory [--json outputs/input-memory.json]

Starts `python -m musicgen serve` (and `serve --train`) on the demo weights and sends, one at a
time, the largest requests the input bounds let through (7.1 at 192 kHz for 20 minutes, the
longest melody and continuation window of it, encode-decode and a training dataset of the most
audio musicgen.audio.read.MAX_DECODED_BYTES keeps), plus the probes that must be refused. While
each runs, a thread samples the worker's VmRSS every 10 ms; the report gives its peak over the
RSS just before the request. A benchmark run by command, not part of the test suite: the README
and docs/memory.md state its figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import requests

from musicgen.audio.read import MAX_DECODED_BYTES, MAX_INPUT_SECONDS
from musicgen.models.memory import MB
from musicgen.settings import read_settings
from tooling.loopback import LoopbackServer
from tooling.server_process import ServerProcess

START_TIMEOUT = 600  # s
REQUEST_TIMEOUT = 1800  # s
SAMPLE_EVERY = 0.01  # s
PEAK_TARGET_MB = 1500  # the bound the README states for any accepted input


@dataclass(frozen=True)
class Source:
    """An input file: `seconds` of `channels` at `rate` Hz (silence with a tone, FLAC: small to send)."""

    name: str
    seconds: float
    rate: int
    channels: int

    def write(self, folder: Path) -> Path:
        layout = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}[self.channels]
        path = folder / self.name
        tone = f"sine=frequency=440:sample_rate={self.rate}:duration={self.seconds}"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", tone, "-filter_complex",
             f"[0]volume=0.1,aformat=channel_layouts={layout}", "-c:a", "flac", "-compression_level", "0", str(path)],
            check=True,
        )  # fmt: skip
        return path


def stereo_48k_minutes(byte_bound: int) -> float:
    return byte_bound / (4 * 2 * 48000 * 60)


SEVEN_ONE = Source("seven-one-192k-20min.flac", 20 * 60, 192000, 8)
# encode-decode keeps the whole file: the longest stereo 48 kHz file and 7.1 48 kHz file within the bound
STEREO_WHOLE = Source(
    "stereo-48k.flac", min(MAX_INPUT_SECONDS, int(stereo_48k_minutes(MAX_DECODED_BYTES) * 60)), 48000, 2
)
SEVEN_ONE_WHOLE = Source("seven-one-48k.flac", int(MAX_DECODED_BYTES / (4 * 8 * 48000)), 48000, 8)
TRAINING = Source("training-stereo-48k.flac", STEREO_WHOLE.seconds, 48000, 2)

# the longest melody of that file within the bound (a melody keeps duration + 30 s)
MELODY_DURATION = int(MAX_DECODED_BYTES / (4 * SEVEN_ONE.channels * SEVEN_ONE.rate)) - 30
# (label, source, request inputs, accepted?)
PREDICTIONS = [
    (
        f"melody {MELODY_DURATION} s of a 20 min 7.1 192 kHz file",
        SEVEN_ONE,
        {"model_version": "melody", "duration": MELODY_DURATION},
        True,
    ),
    ("melody 60 s of the same file (refused)", SEVEN_ONE, {"model_version": "melody", "duration": 60}, False),
    (
        "continuation: a 30 s window of the same file",
        SEVEN_ONE,
        {"model_version": "melody", "continuation": True, "continuation_start": 600, "continuation_end": 630, "duration": 5},
        True,
    ),
    ("encode-decode of the same file (refused)", SEVEN_ONE, {"model_version": "encode-decode"}, False),
    (f"encode-decode of {STEREO_WHOLE.seconds / 60:.1f} min stereo 48 kHz", STEREO_WHOLE, {"model_version": "encode-decode"}, True),
    (f"encode-decode of {SEVEN_ONE_WHOLE.seconds / 60:.1f} min 7.1 48 kHz", SEVEN_ONE_WHOLE, {"model_version": "encode-decode"}, True),
]  # fmt: skip


class PeakSampler:
    """Samples a process's VmRSS in a thread until stopped; `peak` in bytes."""

    def __init__(self, server: ServerProcess):
        self.pid = server.worker_pid()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while not self._stop.wait(SAMPLE_EVERY):
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def measure(server: ServerProcess, endpoint: str, inputs: dict) -> dict:
    idle = server.worker_rss()
    sampler = PeakSampler(server)
    start = time.monotonic()
    answer = requests.post(f"{server.url}/{endpoint}", json={"input": inputs}, timeout=REQUEST_TIMEOUT).json()
    seconds = time.monotonic() - start
    peak = max(sampler.stop(), server.worker_rss())
    return {
        "status": answer.get("status"),
        "error": (answer.get("error") or "")[-300:],
        "idle_mb": round(idle / MB),
        "peak_mb": round(peak / MB),
        "peak_over_idle_mb": round((peak - idle) / MB),
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tooling.bench.input_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--weights-root", type=Path, help="default: the configured root's demo/ (written if missing)")
    parser.add_argument("--json", type=Path, help="also write the records here")
    args = parser.parse_args(argv)
    root = args.weights_root or read_settings().weights_root / "demo"
    if not (root / "musicgen-melody").is_dir():
        from musicgen.demo.builders import write_demo_weights

        write_demo_weights(root)
    records = []
    with tempfile.TemporaryDirectory(prefix="musicgen-input-memory-") as scratch:
        folder = Path(scratch)
        files_dir = folder / "files"
        files_dir.mkdir()
        for source in {SEVEN_ONE, STEREO_WHOLE, SEVEN_ONE_WHOLE}:
            source.write(files_dir)
        with zipfile.ZipFile(files_dir / "dataset.zip", "w") as archive:
            archive.write(TRAINING.write(folder), TRAINING.name)
        files = LoopbackServer(directory=files_dir)
        env = {"TMPDIR": scratch, "MUSICGEN_INPUT_MAX_MB": "200", "MUSICGEN_INPUT_TIMEOUT": "600"}
        try:
            server = ServerProcess(root, folder / "server.log", env=env)
            try:
                server.wait_for({"READY"}, START_TIMEOUT)
                for label, source, inputs, accepted in PREDICTIONS:
                    record = measure(server, "predictions", {**inputs, "input_audio": f"{files.url}/{source.name}"})
                    records.append({"case": label, "expected": "succeeded" if accepted else "failed", **record})
                    print(json.dumps(records[-1]), flush=True)
            finally:
                server.stop()
            trainer = ServerProcess(root, folder / "trainer.log", env=env, args=("--train",))
            try:
                trainer.wait_for({"READY"}, START_TIMEOUT)
                inputs = {"dataset_path": f"{files.url}/dataset.zip", "model_version": "small", "epochs": 1}
                record = measure(trainer, "trainings", {**inputs, "drop_vocals": True})
                label = f"training on {TRAINING.seconds / 60:.1f} min of stereo 48 kHz (one file, vocals dropped)"
                records.append({"case": label, "expected": "succeeded", **record})
                print(json.dumps(records[-1]), flush=True)
            finally:
                trainer.stop()
        finally:
            files.close()
    print(f"\n{'case':<62} {'status':<10} {'idle MB':>8} {'peak over idle MB':>18} {'s':>6}")
    for record in records:
        print(
            f"{record['case']:<62} {record['status']:<10} {record['idle_mb']:>8} "
            f"{record['peak_over_idle_mb']:>18} {record['seconds']:>6}"
        )
    accepted = [record for record in records if record["expected"] == "succeeded"]
    as_expected = all(record["status"] == record["expected"] for record in records)
    within = all(record["peak_over_idle_mb"] < PEAK_TARGET_MB for record in accepted)
    print(
        f"every answer as expected: {as_expected}; every accepted input under {PEAK_TARGET_MB} MB over idle: {within}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return 0 if as_expected and within else 1


if __name__ == "__main__":
    sys.exit(main())
