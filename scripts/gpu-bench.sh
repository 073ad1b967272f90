#!/usr/bin/env bash
# The whole GPU check of docs/benchmarks.md, on an NVIDIA GPU machine with the project set up:
# melody and large (random weights, real architectures) at 8 s and 30 s, stock audiocraft next to
# our loop and to our service on audiocraft's loop, then how closely our loop follows audiocraft's
# (float16 logits, float32 greedy tokens), then N = 4 and 16 concurrent requests with batching against
# one at a time (N = 1) through the real server. JSON files go to outputs/bench/gpu/.
#   bash scripts/gpu-bench.sh [repeats]
set -euo pipefail
cd "$(dirname "$0")/.."
repeats="${1:-1}"
out=outputs/bench/gpu
mkdir -p "$out"
python=.venv/bin/python
for size in melody large; do
  for duration in 8 30; do
    "$python" -m tooling.bench --size "$size" --device cuda --duration "$duration" --repeats "$repeats" \
      --json "$out/$size-${duration}s.json"
  done
  "$python" -m tooling.bench.agreement --size "$size" --device cuda --duration 8 --json "$out/$size-agreement.json"
  # many at once: N concurrent requests with MUSICGEN_MAX_BATCH=N vs the same N one at a time
  "$python" -m tooling.bench.load --size "$size" --device cuda --duration 8 --batches 4,16 \
    --json "$out/$size-load.json"
done
