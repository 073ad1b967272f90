#!/usr/bin/env bash
# The GPU kit: what the lent GPU machine's image lacks for our code, as wheels it installs offline.
#   bash scripts/gpu-kit.sh                       # .gpu-kit/: CPython 3.12 manylinux x86_64 (the image's)
#   bash scripts/gpu-kit.sh --python-version 3.11 # .gpu-kit-cp311/: the same kit for this machine's Python
# Run here (it needs the package registry). The image (device tool's KINDS.md) has torch 2.11.0,
# torchaudio, transformers, huggingface_hub, numpy, scipy, scikit-learn, numba and more: those keep
# the image's versions. The kit holds every other pin of requirements-cuda.txt (the binary ones for
# the target Python, the pure-Python ones as py3 wheels), audiocraft (installed without its
# dependencies, as scripts/setup.sh does), and one stand-in: audiocraft imports spaCy at module level
# for tokenizers MusicGen never uses, and spaCy with its compiled dependencies weighs about 60 MB, so
# the kit carries `stand-ins/spacy`, a module whose load() refuses. The stand-in is for the kit only,
# never the product. At most 60 MiB (the device tool carries 64 MiB per call, the repository included).
set -euo pipefail
cd "$(dirname "$0")/.."

python_version=3.12
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python-version) python_version="$2"; shift 2 ;;
    *) echo "usage: bash scripts/gpu-kit.sh [--python-version 3.12|3.11]" >&2; exit 2 ;;
  esac
done
tag="cp${python_version/./}"
kit=.gpu-kit
[[ "$python_version" == 3.12 ]] || kit=".gpu-kit-$tag"
max_bytes=$((60 * 1024 * 1024))
# pip in a throwaway virtualenv of its own (a fresh clone has no .venv; building the pure-Python
# sdists needs setuptools and wheel)
tools="$(mktemp -d "${TMPDIR:-/tmp}/musicgen-gpu-kit-XXXXXX")"
trap 'rm -rf "$tools"' EXIT
"${PYTHON:-python3}" -m venv "$tools"
pip=("$tools/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet --upgrade pip setuptools wheel

# What the image has (KINDS.md, "Python packages already there"): kept at the image's versions.
image="torch torchaudio transformers huggingface-hub tokenizers safetensors numpy scipy scikit-learn numba
llvmlite joblib threadpoolctl lazy-loader msgpack einops filelock fsspec jinja2 markupsafe networkx sympy mpmath
typing-extensions requests urllib3 idna certifi charset-normalizer packaging pyyaml regex tqdm rich markdown-it-py
mdurl pygments typer click shellingham cloudpickle torchmetrics lightning-utilities wrapt h11 httpcore httpx anyio
hf-xet annotated-doc sentencepiece protobuf psutil pillow narwhals"
# spaCy and what only spaCy imports: replaced by the stand-in.
standin="spacy spacy-legacy spacy-loggers thinc blis srsly preshed cymem murmurhash catalogue confection wasabi
weasel cloudpathlib smart-open"
# Imported by nothing on the check's path (demucs.api's audio writer; cog's own HTTP stack).
unused="sphn httpcore2 httpx2"
skip=" $(echo $image $standin $unused) "

# Versions the image is known to hold (KINDS.md's pip list); for the others our pins stand in.
declare -A image_versions=([transformers]=5.17.0 [huggingface-hub]=1.33.0 [tokenizers]=0.23.2
  [safetensors]=0.8.0 [torchmetrics]=1.9.0)

binary=() pure=() in_image=("sentencepiece==0.2.2")
while IFS= read -r line; do
  [[ -z "$line" || "$line" == \#* || "$line" != *==* ]] && continue
  name="${line%%==*}"
  key="$(echo "$name" | tr 'A-Z_.' 'a-z--')"
  if [[ " $(echo $image) " == *" $key "* && "$key" != torch && "$key" != torchaudio ]]; then
    in_image+=("$name==${image_versions[$key]:-${line#*==}}")
  fi
  [[ "$skip" == *" $key "* ]] && continue
  case "$key" in
    av|cffi|pydantic-core|soxr|lameenc|soundfile|xformers) binary+=("$line") ;;
    *) pure+=("$line") ;;
  esac
done < requirements-cuda.txt
audiocraft="$(sed -n 's/^AUDIOCRAFT_VERSION=//p' scripts/setup.sh)"
pure+=("audiocraft==$audiocraft" "$(grep '^cog==' requirements.txt)")  # predict.py imports cog
binary+=("$(grep '^coglet==' requirements.txt)")

rm -rf "$kit"
mkdir -p "$kit/wheels" "$kit/sdist" "$kit/stand-ins/spacy"
platforms=()
for platform in manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
  manylinux_2_28_x86_64 manylinux_2_34_x86_64 manylinux1_x86_64 manylinux_2_5_x86_64; do
  platforms+=(--platform "$platform")
done
"${pip[@]}" download --quiet --no-deps --only-binary=:all: --python-version "$python_version" \
  --implementation cp "${platforms[@]}" --dest "$kit/wheels" "${binary[@]}"
"${pip[@]}" wheel --quiet --no-deps --wheel-dir "$kit/wheels" "${pure[@]}"  # py3-none-any (some are sdists)
# audiocraft's source archive: its config/ tree gives the bench's random checkpoints their real
# dimensions (tooling.bench.checkpoints), and the GPU machine cannot download it.
"${pip[@]}" download --quiet --no-deps --no-binary :all: --dest "$kit/sdist" \
  "audiocraft==$audiocraft"

cat > "$kit/stand-ins/spacy/__init__.py" <<'EOF'
"""A stand-in for spaCy in the GPU kit only (never in the product): audiocraft.modules.conditioners
imports spaCy at module level for tokenizers MusicGen does not use; nothing on the check's path calls it."""


def load(*args, **kwargs):
    raise RuntimeError("spaCy is not in the GPU kit (a stand-in): this code path is not part of the check")
EOF
printf '%s\n' "${binary[@]}" "${pure[@]}" > "$kit/requirements.txt"
# What the image holds that our code imports (torch aside): what --cpu-proof installs to stand in for it.
printf '%s\n' "${in_image[@]}" > "$kit/image-packages.txt"
{
  echo "GPU kit for CPython $python_version manylinux x86_64, made $(date -u +%Y-%m-%dT%H:%MZ) by scripts/gpu-kit.sh"
  echo "install: pip install --no-index --find-links $kit/wheels --no-deps --target <folder> -r $kit/requirements.txt"
  echo "stand-in (kit only): $kit/stand-ins/spacy (put $kit/stand-ins on PYTHONPATH)"
  echo "audiocraft's source archive (the bench's configs): $(ls "$kit/sdist")"
  (cd "$kit/wheels" && ls -l --block-size=K *.whl | awk '{print $5, $9}')
} > "$kit/KIT.txt"

size=$(du -sb "$kit" | cut -f1)
echo "$kit: $(ls "$kit/wheels" | wc -l) wheels, $((size / 1024 / 1024)) MiB ($size bytes; at most $max_bytes)"
if (( size > max_bytes )); then
  echo "the kit is over 60 MiB" >&2
  exit 1
fi
