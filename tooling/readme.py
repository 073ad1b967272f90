"""`python -m tooling.readme`: write the generated tables into the docs: the model versions
(musicgen.versions) into README.md, the settings (musicgen.settings) into docs/settings.md, and the
weights root's layout (musicgen.versions, musicgen.weights.layout) into weights/README.md.

Each table sits between two marker lines; tests/test_settings.py and tests/test_model_versions.py
fail when one is stale.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from musicgen import atomic_files, settings, versions
from musicgen.settings import REPOSITORY
from musicgen.weights import layout

README = REPOSITORY / "README.md"
SETTINGS_DOC = REPOSITORY / "docs" / "settings.md"
WEIGHTS_README = REPOSITORY / "weights" / "README.md"


def weights_layout() -> str:
    """The weights root's layout, one line per file or folder, every model version's files included."""
    width = 54
    lines = ["```"]
    for name, version in versions.GENERATING.items():
        lm = f"{version.folder}/{layout.LM_FILE}"
        stereo = ", 8 interleaved codebooks" if version.stereo else ""
        lines.append(f"{lm:<{width}}{name} LM ({version.parameters}, {version.conditioning}{stereo})")
        codec = f"{version.folder}/{layout.CODEC_FILE}"
        what = "EnCodec 32 kHz" if version.ships_codec else f"a pointer: {{'pretrained': '{layout.ENCODEC_HF_NAME}'}}"
        lines.append(f"{codec:<{width}}{what}")
    lines += [
        f"{layout.MBD_DIR + '/' + layout.MBD_FILE:<{width}}MultiBand Diffusion decoder (loaded on first use)",
        f"{'huggingface/':<{width}}HF_HOME: hub/models--t5-base/ (T5 text encoder + tokenizer),",
        f"{'':<{width}}hub/models--facebook--encodec_32khz/ (the pointed-to EnCodec)",
        f"{'torch/':<{width}}TORCH_HOME: hub/checkpoints/ (HT-Demucs, the melody models' stems)",
        f"{'demo/':<{width}}tiny random demo weights written by scripts/run.sh",
        f"{'fine-tuned/<key>/<file>':<{width}}fine-tuned LM checkpoints setup() fetched from a URL",
        f"{'bench/<size>/':<{width}}the benchmarks' random-weight checkpoints (docs/benchmarks.md)",
        "```",
    ]
    return "\n".join(lines)


# (file, marker name, the table's text)
TABLES: list[tuple[Path, str, Callable[[], str]]] = [
    (README, "models", versions.markdown_table),
    (SETTINGS_DOC, "settings", settings.markdown_table),
    (WEIGHTS_README, "layout", weights_layout),
]


def with_table(text: str, name: str, table: str) -> str:
    """`text` with `table` between its lines `<!-- name:begin -->` and `<!-- name:end -->`."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    head, found, rest = text.partition(begin)
    _, found_end, tail = rest.partition(end)
    if not (found and found_end):
        raise ValueError(f"needs the lines {begin} and {end}")
    return f"{head}{begin}\n{table}\n{end}{tail}"


def main() -> int:
    for path, name, table in TABLES:
        text = path.read_text()
        if with_table(text, name, table()) != text:
            atomic_files.write_text(path, with_table(text, name, table()))
            print(f"{path}: {name} table written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
