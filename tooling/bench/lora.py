"""LoRA's figures in one command: adapter sizes, training memory and step time, the batched step with adapters.

    python -m tooling.bench.lora [--rank 8] [--threads 1] [--json FILE]
    python -m tooling.bench.lora --only step      # or: sizes, train

On the bench's random checkpoints of real architecture (tooling.bench.checkpoints; small is built
once, melody, 1.5 B, too when the trainings run):
- sizes: a rank-`rank` adapter's file (musicgen.lora.adapter, float16) against the LM's
  state_dict.bin, for small and melody (written from each LM's geometry; its size does not
  depend on the values);
- step: the CPU's batched step of small with `slots` slots occupied, plain (no adapter, as
  before LoRA existed) and with 0, 1 and `slots` distinct adapters among them (random, rank
  `rank`), interleaved, medians of --repeats;
- train: two optimizer steps of a 30 s segment, batch 1 (the second is the first with AdamW's
  moments in memory), through musicgen.train's own pipeline in a fresh process each (tooling.bench.train_step: its peak RSS is the run's), every weight and
  LoRA, on small and melody; a run the memory plan refuses is reported with its message.
Prints figures; a benchmark run by command (docs/benchmarks.md has them), never a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import omegaconf
import torch

from tooling.bench.batched_step import POSITION
from tooling.bench.checkpoints import SIZES, ensure_checkpoints

TRAINING_RUNS = (("small", 0), ("small", None), ("melody", 0), ("melody", None))  # None: --rank


def adapter_sizes(rank: int, roots: dict[str, Path]) -> dict:
    """size -> the rank-`rank` adapter's bytes, the LM file's bytes and their ratio."""
    from musicgen.lora.adapter import Geometry, write_adapter
    from musicgen.models.checkpoints import read_lm_checkpoint
    from musicgen.tokens.adapters import TARGETS
    from musicgen.weights import layout

    figures = {}
    for size in ("small", "melody"):
        lm_file = layout.model_dir(SIZES[size].version, roots[size]) / layout.LM_FILE
        geometry = Geometry.of_config(omegaconf.OmegaConf.create(read_lm_checkpoint(lm_file)["xp.cfg"]))
        pairs = {}
        for index in range(geometry.layers):
            for target in TARGETS:
                out, inner = geometry.shapes(target)
                pairs[index, target] = (torch.zeros(rank, inner), torch.zeros(out, rank))
        with tempfile.TemporaryDirectory() as scratch:
            path = write_adapter(pairs, SIZES[size].version, rank, rank, geometry, {}, Path(scratch) / "a.safetensors")
            adapter_bytes = path.stat().st_size
        lm_bytes = lm_file.stat().st_size
        figures[size] = {
            "adapter_bytes": adapter_bytes,
            "lm_file_bytes": lm_bytes,
            "ratio_percent": round(100 * adapter_bytes / lm_bytes, 3),
        }
        print(f"{size}: rank-{rank} adapter {adapter_bytes / 1e6:.1f} MB, LM file {lm_bytes / 1e9:.2f} GB: "
              f"{100 * adapter_bytes / lm_bytes:.2f} %")  # fmt: skip
    return figures


def step_times(rank: int, slots: int, repeats: int, root: Path) -> dict:
    """The batched step of small with every slot occupied: plain, and 0, 1, `slots` distinct adapters."""
    from musicgen.models.load import load_models
    from musicgen.settings import read_settings
    from musicgen.tokens.cache import CrossAttentionCache
    from musicgen.tokens.checks import check_adapter
    from musicgen.tokens.choose import batched_step

    version = SIZES["small"].version
    settings = read_settings(
        {"MUSICGEN_WEIGHTS": str(root), "MUSICGEN_MODEL_VERSIONS": version, "MUSICGEN_DEVICE": "cpu"}
    )
    models = load_models(settings)
    model, fast = models.get(version).model, models.get(version).loop
    t = fast.transformer
    generator = torch.Generator().manual_seed(1)
    adapters = [check_adapter(model.lm, rank, seed) for seed in range(slots)]
    with torch.inference_mode():
        step = batched_step(t, model, slots, masked=False)
        prefill = fast.cache(2, step.cache.length, torch.zeros(2, 1, t.dim))
        prefill.storage.copy_(torch.randn(prefill.storage.shape, generator=generator))
        tokens = torch.randint(0, model.lm.card, (2, model.lm.num_codebooks), generator=generator)
        keys = [torch.randn(2, t.heads, 12, t.head_dim, generator=generator) for _ in t.layers]
        text = CrossAttentionCache(keys, [torch.randn(k.shape, generator=generator) for k in keys]) if t.cross else None
        kinds = {"plain": [None] * slots, "0 adapters": [None] * slots, "1 adapter": [adapters[0]] + [None] * (slots - 1),
                 f"{slots} distinct adapters": adapters}  # fmt: skip

        def occupy(assigned):
            for slot, adapted in enumerate(assigned):
                step.load(slot, prefill, POSITION, text, adapted)
                step.feed(slot, tokens, POSITION)

        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        occupy(kinds["plain"])
        step.step()  # warm-up
        for _ in range(repeats):
            for kind, assigned in kinds.items():  # interleaved
                occupy(assigned)
                start = time.perf_counter()
                step.step()
                times[kind].append(time.perf_counter() - start)
    medians = {kind: round(statistics.median(values) * 1000, 1) for kind, values in times.items()}
    plain = medians["plain"]
    print(f"the batched step of small, {slots} slots occupied, rank-{rank} adapters ({step.form}):")
    for kind, value in medians.items():
        print(f"  {kind:>22}: {value:8.1f} ms ({value / plain:.3f}x plain)")
    return {"slots": slots, "rank": rank, "form": step.form, "median_ms": medians,
            "ratio_to_plain": {kind: round(value / plain, 3) for kind, value in medians.items()}}  # fmt: skip


def trainings(rank: int, threads: int, environment: dict[str, str]) -> list[dict]:
    """Each of TRAINING_RUNS in a fresh process (in `environment`, this one's before boot): its
    figures (or refusal)."""
    runs = []
    for size, run_rank in TRAINING_RUNS:
        run_rank = rank if run_rank is None else run_rank
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "figures.json"
            command = [sys.executable, "-m", "tooling.bench.train_step", "--size", size, "--seconds", "30",
                       "--batch", "1", "--steps", "2", "--threads", str(threads), "--lora-rank", str(run_rank),
                       "--json", str(out)]  # fmt: skip
            print(f"training {size}, lora_rank={run_rank} ...", flush=True)
            result = subprocess.run(command, capture_output=True, text=True, env=environment)
            if result.returncode != 0:
                raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")
            figures = json.loads(out.read_text())
        runs.append(figures)
        shown = figures.get("refused") or (
            f"steps {', '.join(f'{value:.1f}' for value in figures['step_seconds'])} s, peak RSS {figures['peak_rss_gb']:.2f} GB, "
            f"{figures['trained_parameters'] / 1e6:.1f} M trained parameters, checkpointing "
            f"{figures['activation_checkpointing']}"
        )
        print(f"  {size}, lora_rank={run_rank}: {shown}", flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tooling.bench.lora", description=__doc__.split("\n")[0])
    parser.add_argument("--rank", type=int, default=8, help="the adapters' rank (default 8)")
    parser.add_argument("--slots", type=int, default=4, help="N, the batch's slots (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--only", choices=["sizes", "step", "train"], help="one part of the figures")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    environment = dict(os.environ)
    sizes = ["small"] if args.only == "step" else ["small", "melody"]
    roots = {size: ensure_checkpoints(size) for size in sizes}  # built once, in child processes
    from musicgen.boot import boot

    boot(roots["small"])
    torch.set_num_threads(args.threads)
    command = "python -m tooling.bench.lora " + " ".join(argv if argv is not None else sys.argv[1:])
    figures: dict = {"command": command.strip()}
    if args.only in (None, "sizes"):
        figures["sizes"] = adapter_sizes(args.rank, roots)
    if args.only in (None, "step"):
        figures["step"] = step_times(args.rank, args.slots, args.repeats, roots["small"])
    if args.only in (None, "train"):
        figures["train"] = trainings(args.rank, args.threads, environment)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
