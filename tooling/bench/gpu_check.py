"""The GPU check: every GPU figure in one run of time-boxed steps (scripts/gpu-check.sh runs it).

    python -m tooling.bench.gpu_check --profile gpu --out DIR      # on a lent GPU machine
    python -m tooling.bench.gpu_check --profile cpu-proof --out DIR

Each step is a command of its own (the stock-vs-ours bench, the agreement check) run under a time
box, capped by what is left of the whole run's; a step that reaches its box is stopped and the
summary says so. Each step's JSON and log go to DIR; the summary table is printed and written to
DIR/summary.json. Exit status 0 once anything was measured, whatever the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

TOTAL_SECONDS = {"gpu": 450, "cpu-proof": 600}  # the whole run's box: under 8 minutes on a GPU

ENVIRONMENT = """
import json, platform, torch
device = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
    "device": device.name if device else "cpu",
    "device_memory_gb": round(device.total_memory / 2**30, 1) if device else None,
}))
"""


@dataclass
class Step:
    """One measurement: a command (with {json} for its output file) and its time box in seconds."""

    name: str
    command: list[str]
    seconds: int
    skipped: str = ""  # why the step cannot run yet (nothing is started)
    result: dict = field(default_factory=dict)


def bench(size: str, device: str, duration: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tooling.bench", "--size", size, "--device", device, "--duration",
            str(duration), "--repeats", "1", *extra, "--json", "{json}"]  # fmt: skip


def agreement(size: str, device: str, duration: int) -> list[str]:
    return [sys.executable, "-m", "tooling.bench.agreement", "--size", size, "--device", device,
            "--duration", str(duration), "--json", "{json}"]  # fmt: skip


def load(size: str, device: str, duration: int, batches: str) -> list[str]:
    """N predictions at once with batching against one at a time, through the real server."""
    return [sys.executable, "-m", "tooling.bench.load", "--size", size, "--device", device,
            "--duration", str(duration), "--batches", batches, "--json", "{json}"]  # fmt: skip


def budget(device: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "tooling.bench.gpu_check", "--budget", device, "--out", str(out),
            "--json", "{json}"]  # fmt: skip


def steps(profile: str, out: Path) -> list[Step]:
    environment = Step("environment", [sys.executable, "-c", ENVIRONMENT], 20)
    if profile == "cpu-proof":
        return [
            environment,
            Step("tiny 1 s: stock vs ours (setup's loop in the records)", bench("tiny", "cpu", 1, "--no-warm"), 120),
            Step("agreement, tiny 1 s", agreement("tiny", "cpu", 1), 60),
            # the real-architecture path: checkpoints from audiocraft's configs in the kit, offline
            Step(
                "small 1 s: stock vs ours", bench("small", "cpu", 1, "--no-warm", "--sides", "audiocraft,musicgen"), 420
            ),
            Step(
                "batched decoding: tiny 1 s, N = 2 against one at a time, through the server",
                load("tiny", "cpu", 1, "2"),
                120,
            ),
            Step("memory budget: estimate vs measured", budget("cpu", out), 60),
        ]
    return [
        environment,
        Step("small 8 s: stock vs ours (setup's loop in the records)", bench("small", "cuda", 8, "--no-warm"), 50),
        Step("melody 8 s: stock vs ours", bench("melody", "cuda", 8), 110),
        Step("agreement, melody 8 s (float16 logits, float32 greedy tokens)", agreement("melody", "cuda", 8), 60),
        Step("large 30 s: stock vs ours", bench("large", "cuda", 30, "--no-warm"), 140),
        Step(
            "batched decoding: small 3 s, N = 4 against one at a time, through the server",
            load("small", "cuda", 3, "4"),
            70,
        ),
        Step("memory budget: estimate vs measured", budget("cuda", out), 30),
    ]


def run(step: Step, out: Path, seconds_left: float) -> None:
    """Run `step` under min(its box, what is left); fill step.result."""
    if step.skipped:
        step.result = {"status": "skipped", "why": step.skipped}
        return
    box = int(min(step.seconds, seconds_left))
    if box < 5:
        step.result = {"status": "skipped", "why": "the whole run's time box is spent"}
        return
    slug = "".join(c if c.isalnum() else "-" for c in step.name.split(":")[0]).strip("-")
    json_path, log_path = out / f"{slug}.json", out / f"{slug}.log"
    command = [part.replace("{json}", str(json_path)) for part in step.command]
    start = time.monotonic()
    with log_path.open("w") as log:
        # a session of its own: at the box, the step's children (the bench's measured processes,
        # a checkpoint build) are stopped with it and do not run on into the next step
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=box)
            status = "measured" if code == 0 else f"failed (exit {code}; see {log_path.name})"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            status = f"stopped at its {box} s time box (what it skipped: the rest of this step)"
    step.result = {"status": status, "seconds": round(time.monotonic() - start, 1), "log": log_path.name}
    if step.name == "environment" and status == "measured":
        step.result["figures"] = json.loads(log_path.read_text().strip().splitlines()[-1])
    elif json_path.exists():
        report = json.loads(json_path.read_text())
        step.result["json"] = json_path.name
        step.result["figures"] = report.get("summary", report)
        ours = [record for record in report.get("records", []) if record.get("impl") == "musicgen"]
        if ours:  # which loop setup() chose for our side, why, and its set-up checks against their tolerance
            setup = {"serving loop": ours[0]["loop"], "why": ours[0].get("loop_why")}
            step.result["figures"] = {"setup": setup | ours[0].get("loop_checks", {}), **step.result["figures"]}


def budget_report(device: str, out: Path) -> dict:
    """Per model measured by the steps in `out`: the memory budget's estimate for its LM
    (models.sizes.lm_bytes, what eviction plans with) next to our side's measured peak (GPU memory
    allocated on CUDA, the process's RSS on a CPU, which holds everything else too)."""
    from musicgen.models.sizes import lm_bytes
    from musicgen.weights.layout import MODEL_DIRS
    from tooling.bench.checkpoints import bench_root

    figures = {}
    for path in sorted(out.glob("*.json")):
        report = json.loads(path.read_text())
        for record in report.get("records", []) if isinstance(report, dict) else []:
            if record.get("impl") != "musicgen" or record["size"] in figures:
                continue
            checkpoint = bench_root(record["size"]) / MODEL_DIRS[record["model_version"]] / "state_dict.bin"
            estimate = lm_bytes(checkpoint, device) / 2**20
            measured = record.get("gpu_peak_allocated_mb", record.get("peak_mem_mb"))
            figures[record["size"]] = {
                "lm_estimate_mb": round(estimate),
                "measured_peak_mb": None if measured is None else round(measured),
                "measured_over_estimate": None if measured is None else round(measured / estimate, 2),
            }
    return {"summary": figures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tooling.bench.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=list(TOTAL_SECONDS), default="gpu")
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu-check"))
    parser.add_argument("--budget", choices=["cpu", "cuda"], help="only the budget step: read --out, write --json")
    parser.add_argument("--json", type=Path, help="with --budget: where its figures go")
    args = parser.parse_args(argv)
    if args.budget:
        args.json.write_text(json.dumps(budget_report(args.budget, args.out), indent=2) + "\n")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + TOTAL_SECONDS[args.profile]
    plan = steps(args.profile, args.out)
    for step in plan:
        run(step, args.out, deadline - time.monotonic())
        print(f"{step.name}: {step.result['status']}", flush=True)
    summary = {"profile": args.profile, "steps": {step.name: step.result for step in plan}}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{'step':<66} {'status':<10} {'s':>6}")
    for step in plan:
        print(f"{step.name:<66} {step.result['status'].split(' (')[0]:<10} {step.result.get('seconds', ''):>6}")
        figures = step.result.get("figures")
        if isinstance(figures, dict):
            for key, value in list(_flat(figures).items())[:12]:
                print(f"    {key}: {value}")
    print(f"\nJSON: {args.out}/summary.json")
    measured = any(step.result["status"] == "measured" for step in plan[1:])
    return 0 if measured else 1


def _flat(figures: dict, prefix: str = "") -> dict:
    """Nested figures as dotted keys, numbers, strings and booleans only."""
    flat = {}
    for key, value in figures.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[f"{prefix}{key}"] = value
    return flat


if __name__ == "__main__":
    sys.exit(main())
