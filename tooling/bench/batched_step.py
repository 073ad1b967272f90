"""The CPU's batched step, piece by piece: its linear maps per row count, then whole steps per occupancy.

    python -m tooling.bench.batched_step [--size small] [--slots 4] [--threads 1]

On the bench's random checkpoint of real architecture (tooling.bench.checkpoints), in one
process, interleaved, medians of --repeats:
- every linear map a step multiplies by (the LM's own weights, all layers and heads), for 2 to 2N
  rows: F.linear (the one-window step's), wide_linear and PackedLinear (tokens/row_linear.py), and
  whether each one's rows keep their numbers whatever the row count;
- one eager step of one window (N = 1's), and the batched step with 1 to N slots occupied, with
  the set-up check's verdict (`compact`).
Prints figures; a benchmark run by command (docs/benchmarks.md has them), never a test.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tooling.bench.checkpoints import SIZES, ensure_checkpoints

POSITION = 200  # the cache position the steps run at (about 4 s into a window)


def _median_ms(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _linear_maps(transformer):
    """(weight, bias) of every linear map a step multiplies by, as the batched step binds them."""
    from musicgen.tokens.layer import bind_linear

    bound = []

    def collect(weight, bias):
        bound.append((weight, bias))
        return bind_linear(weight, bias)

    transformer.with_linear(collect)
    return bound


def linear_figures(transformer, slots: int, repeats: int) -> None:
    from musicgen.tokens.layer import bind_linear
    from musicgen.tokens.row_linear import PackedBinder, bind_wide

    maps = _linear_maps(transformer)
    packed = PackedBinder(2 * slots)
    kinds = {
        "F.linear": [bind_linear(w, b) for w, b in maps],
        "wide_linear": [bind_wide(w, b) for w, b in maps],
        "PackedLinear": [packed(w, b) for w, b in maps],
    }
    generator = torch.Generator().manual_seed(0)
    inputs = {w.shape[1]: torch.randn(2 * slots, w.shape[1], generator=generator) for w, _ in maps}
    print(f"linear maps of one step: {len(maps)}, {sum(w.numel() for w, _ in maps) * 4 / 1e9:.2f} GB float32")
    print(f"{'rows':>5} " + " ".join(f"{kind + ' ms':>16}" for kind in kinds))

    def every_map(linears, rows):
        return lambda: [linear(inputs[w.shape[1]][:rows]) for linear, (w, _) in zip(linears, maps, strict=True)]

    for rows in range(2, 2 * slots + 1, 2):
        figures = {}
        for kind, linears in kinds.items():  # interleaved, row count by row count
            figures[kind] = _median_ms(every_map(linears, rows), repeats)
        print(f"{rows:>5} " + " ".join(f"{figures[kind]:>16.0f}" for kind in kinds))
    print("rows keep their numbers whatever the row count (2 to 2N, every map):")
    for kind, linears in kinds.items():
        same = True
        for linear, (weight, _) in zip(linears, maps, strict=True):
            full = linear(inputs[weight.shape[1]])
            same &= all(
                torch.equal(linear(inputs[weight.shape[1]][:rows]), full[:rows]) for rows in range(2, 2 * slots, 2)
            )
        print(f"  {kind}: {same}")


def step_figures(model, fast, slots: int, repeats: int) -> None:
    from musicgen.tokens.cache import CrossAttentionCache
    from musicgen.tokens.choose import batched_step

    t = fast.transformer
    generator = torch.Generator().manual_seed(1)
    step = batched_step(t, model, slots, masked=False)
    prefill = fast.cache(2, step.cache.length, torch.zeros(2, 1, t.dim))
    prefill.storage.copy_(torch.randn(prefill.storage.shape, generator=generator))

    def text():
        if not t.cross:
            return None
        keys = [torch.randn(2, t.heads, 12, t.head_dim, generator=generator) for _ in t.layers]
        return CrossAttentionCache(keys, [torch.randn(k.shape, generator=generator) for k in keys])

    tokens = torch.randint(0, model.lm.card, (2, model.lm.num_codebooks), generator=generator)
    cross = text()
    print(f"the batched step's set-up check: compact={step.compact} (packed copy {step.packed_bytes / 1e9:.2f} GB)")
    print(
        f"one window's eager step (N = 1): {_median_ms(lambda: fast.eager_step(tokens, POSITION, prefill, cross), repeats):.0f} ms"
    )
    for occupied in range(1, slots + 1):
        for slot in range(slots):
            step.free(slot)
        for slot in range(occupied):
            step.load(slot, prefill, POSITION, text())
            step.feed(slot, tokens, POSITION)
        print(f"the batched step, {occupied} of {slots} slots occupied: {_median_ms(step.step, repeats):.0f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tooling.bench.batched_step", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--slots", type=int, default=4, help="N, the batch's slots (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    root = ensure_checkpoints(args.size)
    from musicgen.boot import boot

    boot(root)
    from musicgen.models.load import load_models
    from musicgen.settings import read_settings

    torch.set_num_threads(args.threads)
    version = SIZES[args.size].version
    settings = read_settings(
        {"MUSICGEN_WEIGHTS": str(root), "MUSICGEN_MODEL_VERSIONS": version, "MUSICGEN_DEVICE": "cpu"}
    )
    models = load_models(settings)
    with torch.inference_mode():
        linear_figures(models.get(version).loop.transformer, args.slots, args.repeats)
        step_figures(models.get(version).model, models.get(version).loop, args.slots, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
