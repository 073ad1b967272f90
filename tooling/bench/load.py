"""Many predictions at once: wall time with continuous batching against one at a time, through the real server.

    python -m tooling.bench.load [--size small] [--duration 3] [--batches 4,8] [--json FILE]

For each N of --batches, in one run: a server with MUSICGEN_MAX_BATCH=1 answers N requests one at
a time (each timed alone); a server with MUSICGEN_MAX_BATCH=N answers one request alone, then the
same N requests sent at once (wall time until the last answer), then each of them alone again, to
show that every request's bytes are the same alone and in the crowd. The requests differ in prompt,
seed and sampling (top-k, top-p, temperature, greedy). Servers run with one torch thread
(--threads) on the bench's random checkpoints of real architecture (tooling.bench.checkpoints).
Prints a table and ratios; exits 1 when a request's bytes differ between alone and crowd. A
benchmark run by command (docs/benchmarks.md has its figures), never a test.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import requests

from tooling.bench.checkpoints import SIZES, ensure_checkpoints
from tooling.server_process import ServerProcess

START_TIMEOUT = 1800  # s: the bench checkpoints load on a shared CPU
REQUEST_TIMEOUT = 3600  # s
TARGETS = {4: 0.45, 8: 0.30}  # the bounds for N concurrent with N over N one at a time
ALONE_TARGET = 1.15  # one request alone with N = 4 over N = 1
SAMPLINGS = (
    {"top_k": 250},
    {"top_p": 0.9},
    {"temperature": 0.7, "top_k": 50},
    {"temperature": 0},  # greedy
    {"classifier_free_guidance": 1, "top_k": 100},
    {"classifier_free_guidance": 30},
    {"top_p": 0.5, "temperature": 1.3},
    {"classifier_free_guidance": 0},
)
PROMPTS = ("calm piano", "fast drums", "ambient pads", "jazz trio", "rock riff", "strings", "lo-fi beat", "synthwave")


def crowd(version: str, count: int, duration: int) -> list[dict]:
    """`count` different requests of `duration` seconds."""
    return [
        {"model_version": version, "prompt": PROMPTS[i % len(PROMPTS)], "duration": duration, "seed": 100 + i,
         **SAMPLINGS[i % len(SAMPLINGS)]}
        for i in range(count)
    ]  # fmt: skip


def predict(server: ServerProcess, inputs: dict) -> tuple[str, float]:
    """(the output, seconds) of one synchronous prediction; raises when it does not succeed."""
    start = time.monotonic()
    answer = requests.post(f"{server.url}/predictions", json={"input": inputs}, timeout=REQUEST_TIMEOUT)
    seconds = time.monotonic() - start
    body = answer.json() if answer.status_code == 200 else {"status": f"HTTP {answer.status_code}"}
    if body.get("status") != "succeeded":
        raise RuntimeError(f"{inputs}: {body.get('status')} {body.get('error') or answer.text[:300]}")
    return body["output"], seconds


def at_once(server: ServerProcess, requests_: list[dict]) -> tuple[list[str], float]:
    """Every request sent at the same moment: (their outputs, wall seconds until the last answer)."""
    outputs: list[str | None] = [None] * len(requests_)
    errors: list[BaseException] = []

    def send(index: int) -> None:
        try:
            outputs[index] = predict(server, requests_[index])[0]
        except BaseException as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests_))]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return outputs, time.monotonic() - start


def serve(root: Path, folder: Path, name: str, env: dict[str, str]) -> ServerProcess:
    return ServerProcess(root, folder / f"{name}.log", env=env).ready(START_TIMEOUT)


def measure(root: Path, version: str, batch: int, duration: int, env: dict[str, str], folder: Path) -> dict:
    requests_ = crowd(version, batch, duration)
    one = serve(root, folder, f"n1-for-{batch}", {**env, "MUSICGEN_MAX_BATCH": "1"})
    try:
        predict(one, requests_[0])  # warm-up
        one_at_a_time = [predict(one, inputs)[1] for inputs in requests_]
    finally:
        one.stop()
    many = serve(root, folder, f"n{batch}", {**env, "MUSICGEN_MAX_BATCH": str(batch)})
    try:
        predict(many, requests_[0])  # warm-up
        single = predict(many, requests_[0])[1]
        outputs, wall = at_once(many, requests_)
        alone = [predict(many, inputs)[0] for inputs in requests_]
    finally:
        many.stop()
    same = [crowd_output == alone_output for crowd_output, alone_output in zip(outputs, alone, strict=True)]
    sequential = sum(one_at_a_time)
    return {
        "batch": batch,
        "requests": batch,
        "duration_s": duration,
        "one_at_a_time_s": [round(s, 2) for s in one_at_a_time],
        "one_at_a_time_total_s": round(sequential, 2),
        "concurrent_wall_s": round(wall, 2),
        "ratio": round(wall / sequential, 3),
        "target": TARGETS.get(batch),
        "single_n1_s": round(one_at_a_time[0], 2),
        "single_nN_s": round(single, 2),
        "single_ratio": round(single / one_at_a_time[0], 3),
        "same_bytes_alone_and_in_the_crowd": same,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tooling.bench.load", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--duration", type=int, default=3, help="seconds per request (default 3)")
    parser.add_argument("--batches", default="4,8", help="the N values, comma-separated (default 4,8)")
    parser.add_argument("--device", help="MUSICGEN_DEVICE for the servers (default: theirs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the servers (default 1)")
    parser.add_argument("--json", type=Path, help="also write the records here")
    args = parser.parse_args(argv)
    root = ensure_checkpoints(args.size)
    version = SIZES[args.size].version
    env = {"MUSICGEN_MODEL_VERSIONS": version, "OMP_NUM_THREADS": str(args.threads)}
    if args.device:
        env["MUSICGEN_DEVICE"] = args.device
    records = []
    with tempfile.TemporaryDirectory(prefix="musicgen-load-") as scratch:
        env["TMPDIR"] = scratch
        for batch in (int(text) for text in args.batches.split(",")):
            records.append({"size": args.size, **measure(root, version, batch, args.duration, env, Path(scratch))})
            print(json.dumps(records[-1]), flush=True)
    print(f"\n{'N':>3} {'one at a time s':>16} {'N at once s':>12} {'ratio':>6} {'target':>7} "
          f"{'alone N=1 s':>12} {'alone N s':>10} {'ratio':>6} {'same bytes':>11}")  # fmt: skip
    for r in records:
        target = f"{r['target']:.2f}" if r["target"] else "-"
        print(
            f"{r['batch']:>3} {r['one_at_a_time_total_s']:>16} {r['concurrent_wall_s']:>12} {r['ratio']:>6} "
            f"{target:>7} {r['single_n1_s']:>12} {r['single_nN_s']:>10} {r['single_ratio']:>6} "
            f"{str(all(r['same_bytes_alone_and_in_the_crowd'])):>11}"
        )
    if args.json:
        summary = {
            f"N={r['batch']}": {key: r[key] for key in ("ratio", "target", "single_ratio")}
            | {"same bytes alone and in the crowd": all(r["same_bytes_alone_and_in_the_crowd"])}
            for r in records
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"summary": summary, "records": records}, indent=2) + "\n")
    return 0 if all(all(r["same_bytes_alone_and_in_the_crowd"]) for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
