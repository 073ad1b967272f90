#!/usr/bin/env bash
# Set up (idempotent) and generate music with predict.py's Predictor: the main job.
# Arguments are `python -m musicgen predict` arguments; by default a 4-second piano piece.
# Without real checkpoints under the weights root it uses tiny random demo weights (noise-like
# output that exercises the whole pipeline); `python -m musicgen download --all` fetches the real ones.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
root=${MUSICGEN_WEIGHTS:-$PWD/weights}
if [ ! -f "$root/musicgen-melody/state_dict.bin" ]; then
  root=$PWD/weights/demo
  echo "run: no real weights under ${MUSICGEN_WEIGHTS:-weights/}; using demo weights in weights/demo/" >&2
  [ -f "$root/musicgen-large/state_dict.bin" ] || .venv/bin/python -m musicgen demo-weights "$root"
fi
export MUSICGEN_WEIGHTS=$root
if [ $# -eq 0 ]; then
  set -- -i prompt="calm piano with soft strings" -i duration=4 -i seed=0 -o outputs/calm-piano.wav
fi
exec .venv/bin/python -m musicgen predict "$@"
