#!/usr/bin/env bash
# The GPU check in one command, offline: installs the kit (bash scripts/gpu-kit.sh, made beforehand
# where the registry is reachable) with pip --no-index into a folder of its own, then runs the
# time-boxed steps of tooling.bench.gpu_check (random-weight checkpoints of the real
# architectures, built on first use; stock audiocraft vs ours; the agreement check) and prints one
# summary. JSON goes to $OUT when set (the device tool brings it back), else outputs/gpu-check/.
#   bash scripts/gpu-check.sh              # on the lent GPU machine (docs/benchmarks.md: the call)
#   bash scripts/gpu-check.sh --cpu-proof  # here: the same offline path on this CPU at tiny sizes,
#                                          # from a fresh virtualenv standing in for the GPU image
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
profile=gpu
[[ "${1:-}" == "--cpu-proof" ]] && profile=cpu-proof
out="${OUT:-outputs/gpu-check}"
[[ "$profile" == cpu-proof && -z "${OUT:-}" ]] && out=outputs/gpu-proof
mkdir -p "$out"
work="$(mktemp -d "${TMPDIR:-/tmp}/musicgen-gpu-check-XXXXXX")"
start=$SECONDS

if [[ "$profile" == gpu ]]; then
  kit=.gpu-kit
  python=python3  # the image's: it holds torch
else
  kit=.gpu-kit-cp311
  [[ -d "$kit/wheels" ]] || bash scripts/gpu-kit.sh --python-version 3.11
  # A stand-in for the image: torch and the image's packages our code imports, nothing else
  # (--no-deps), at the image's versions where KINDS.md gives them (transformers, huggingface_hub,
  # tokenizers, safetensors, sentencepiece, torchmetrics) and our pins otherwise, from the registry
  # (the kit's image-packages.txt). torch is this machine's CPU build of setup.sh's pin: the image's
  # CUDA build of 2.11.0 cannot run here.
  venv="$work/image"
  python3.11 -m venv "$venv"
  python="$venv/bin/python"
  pip=("$python" -m pip --disable-pip-version-check -q)
  torch_version="$(sed -n 's/^TORCH_VERSION=//p' scripts/setup.sh)"
  "${pip[@]}" install --no-deps "torch==$torch_version"
  "${pip[@]}" install --no-deps "torchaudio==$(sed -n 's/^TORCHAUDIO_VERSION=//p' scripts/setup.sh)"
  rm -f "$venv"/lib/python3.*/site-packages/torchaudio/lib/*.so  # as setup.sh does on CPU
  "${pip[@]}" install --no-deps -r "$kit/image-packages.txt"
  echo "gpu-check: image stand-in ready in $((SECONDS - start)) s"
fi

# Offline from here on, as on the GPU machine: nothing but the kit's own wheels and archive.
export PIP_NO_INDEX=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$python" -m pip install --disable-pip-version-check -q --no-index --no-deps \
  --find-links "$kit/wheels" --target "$work/site" -r "$kit/requirements.txt"
export PYTHONPATH="$work/site:$repo/$kit/stand-ins:$repo"
export MUSICGEN_WEIGHTS="$work/weights"
mkdir -p "$MUSICGEN_WEIGHTS/bench/sdist"  # where the bench looks for audiocraft's configs before downloading
cp "$kit"/sdist/audiocraft-*.tar.gz "$MUSICGEN_WEIGHTS/bench/sdist/"
echo "gpu-check: kit installed offline in $((SECONDS - start)) s"
"$python" -m tooling.bench.gpu_check --profile "$profile" --out "$out"
echo "gpu-check: done in $((SECONDS - start)) s"
