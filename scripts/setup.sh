#!/usr/bin/env bash
# Idempotent set-up on a Debian machine with Python 3.11 (root for apt): ffmpeg, the virtualenv
# at .venv/, and every pinned Python package. CPU machines get torch 2.13.0 (docs/stack.md says why).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
TORCHAUDIO_VERSION=2.11.0
AUDIOCRAFT_VERSION=1.3.0
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

# Debian packages: ffmpeg (audio), nginx with its JavaScript module (deploy/nginx/, the proxy the
# tests start in front of the server; its service is not started), chromium (the listening page's
# test drives it headless).
NGINX_JS=/usr/lib/nginx/modules/ngx_http_js_module.so
if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null || ! command -v nginx >/dev/null \
  || [ ! -f "$NGINX_JS" ] || [ ! -x /usr/bin/chromium ]; then
  echo "setup: installing ffmpeg, nginx and chromium (Debian packages)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then  # packages must not start their services here
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod +x "$policy"
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg nginx-light libnginx-mod-http-js chromium >/dev/null
  [ -z "$policy" ] || $SUDO rm -f "$policy"
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
stamp=.venv/.musicgen-installed
want=$(cat scripts/setup.sh requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0  # already installed from these exact pins
fi

echo "setup: installing Python packages into .venv/"
# torch first and pinned: anything that lets pip choose a torch pulls gigabytes of CUDA packages.
"${PIP[@]}" install "torch==${TORCH_VERSION}"
# torchaudio's PyPI wheels are CUDA builds tied to torch 2.11; on CPU torch 2.13 its compiled
# extensions cannot load, but the pure-Python parts audiocraft uses (resample, Spectrogram,
# loudness) work once the extensions are removed.
"${PIP[@]}" install --no-deps "torchaudio==${TORCHAUDIO_VERSION}"
if ! .venv/bin/python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  rm -f .venv/lib/python3.*/site-packages/torchaudio/lib/*.so
fi
"${PIP[@]}" install -r requirements.txt -r requirements-dev.txt
# audiocraft pins torch==2.1.0 and friends it does not need at run time: install it alone.
"${PIP[@]}" install --no-deps "audiocraft==${AUDIOCRAFT_VERSION}"
# This repository itself, editable, so `python -m musicgen` works from any folder.
"${PIP[@]}" install --no-deps --no-build-isolation -e .
.venv/bin/python -c "from musicgen.boot import quiet_libraries; quiet_libraries(); import torch, torchaudio, audiocraft.models, demucs, transformers, cog"
echo "$want" > "$stamp"
echo "setup: done"
