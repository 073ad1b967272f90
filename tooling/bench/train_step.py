"""One fine-tuning step's time and peak memory on a bench checkpoint, every weight or LoRA.

    python -m tooling.bench.train_step --size small --seconds 30 --batch 1 --steps 3 --threads 1 [--lora-rank 8]

Runs musicgen.train's own pipeline (fine_tune: data preparation, train_lm, export) on `size`'s
random checkpoint (tooling.bench.checkpoints, served as its model_version) with a dataset of
`batch` tones of `seconds` each: `steps` optimizer steps of one batch. Reports each step's time
(the first one also warms up the allocator and kernels), the load and preparation time, the LM's
parameters with the bytes its weights, gradients and AdamW state take in float32, and the process's
peak resident memory (VmHWM: loading, data preparation and training included). One process per run,
started fresh, so the peak is this run's. A training the memory plan refuses (musicgen.train.memory)
is reported with the plan's message instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tarfile
import tempfile
import wave
from pathlib import Path

import numpy as np

from tooling.bench.checkpoints import SIZES, ensure_checkpoints

RATE = 32000  # Hz: the models' rate, so nothing is resampled
FLOAT32_TRAINING_BYTES = 16  # per parameter: float32 weights (4), gradients (4), AdamW's two moments (8)


def write_tones(folder: Path, count: int, seconds: float) -> list[Path]:
    """`count` 16-bit mono sine WAVs (different pitches) in `folder`."""
    t = np.arange(round(seconds * RATE)) / RATE
    for index in range(count):
        samples = (0.3 * np.sin(2 * np.pi * (220 + 55 * index) * t) * 32767).astype("<i2")
        with wave.open(str(folder / f"tone-{index}.wav"), "wb") as file:
            file.setnchannels(1)
            file.setsampwidth(2)
            file.setframerate(RATE)
            file.writeframes(samples.tobytes())
    return sorted(folder.glob("tone-*.wav"))


def peak_rss_bytes() -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(size: str, seconds: float, batch: int, steps: int, lora_rank: int = 0) -> dict:
    """Run the fine-tune in this process (its weights root and threads already configured)."""
    import torch

    from musicgen.errors import InputError
    from musicgen.settings import read_settings
    from musicgen.train.options import TrainRequest
    from musicgen.train.run import fine_tune

    with tempfile.TemporaryDirectory(prefix="musicgen-train-bench-") as scratch:
        archive = Path(scratch) / "tones.tar"
        with tarfile.open(archive, "w") as tar:
            for path in write_tones(Path(scratch), batch, seconds):
                tar.add(path, arcname=path.name)
        request = TrainRequest(
            dataset_path=archive, model_version=SIZES[size].version, epochs=steps, batch_size=batch,
            lr=1e-5, warmup_steps=0, drop_vocals=False, seed=0, lora_rank=lora_rank,
        )  # fmt: skip
        figures = {"size": size, "lora_rank": lora_rank, "seconds": seconds, "batch": batch, "steps": steps}
        try:
            result = fine_tune(request, read_settings().replace(device="cpu"), output_dir=Path(scratch) / "out")
        except InputError as refused:
            return {**figures, "refused": str(refused), "peak_rss_gb": round(peak_rss_bytes() / 1e9, 3)}
        if lora_rank:
            from musicgen.lora.adapter import read_adapter

            adapter = read_adapter(result.checkpoint)
            parameters = sum(t.numel() for pair in adapter.pairs.values() for t in pair)
            figures["adapter_bytes"] = result.checkpoint.stat().st_size
        else:
            state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)["best_state"]
            parameters = sum(tensor.numel() for tensor in state.values() if tensor.is_floating_point())
    return {
        **figures,
        "size": size,
        "seconds": seconds,
        "batch": batch,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "step_seconds": [round(value, 3) for value in result.step_seconds],
        "step_seconds_median_after_first": round(statistics.median(result.step_seconds[1:] or result.step_seconds), 3),
        "load_and_prepare_seconds": round(result.seconds - sum(result.step_seconds), 3),
        "trained_parameters": parameters,
        "trained_weights_grads_adamw_gb": round(parameters * FLOAT32_TRAINING_BYTES / 1e9, 3),
        "activation_checkpointing": result.record["activation_checkpointing"],
        "peak_rss_gb": round(peak_rss_bytes() / 1e9, 3),
        "losses": [round(value, 4) for value in result.losses],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tooling.bench.train_step", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["tiny", "small", "melody"], default="small", help="bench checkpoint")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each training segment")
    parser.add_argument("--batch", type=int, default=1, help="segments per step")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps (the first also warms up)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (OMP_NUM_THREADS)")
    parser.add_argument("--lora-rank", type=int, default=0, help="0: every LM weight; else LoRA of this rank")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    root = ensure_checkpoints(args.size)  # built once, in a child process
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["MUSICGEN_WEIGHTS"] = str(root)
    from musicgen.boot import boot

    boot(root)
    import torch

    torch.set_num_threads(args.threads)
    figures = measure(args.size, args.seconds, args.batch, args.steps, args.lora_rank)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
