"""`python -m tooling.bench`: stock audiocraft and our Predictor side by side on random checkpoints (report.py)."""

import argparse
import sys

from musicgen.boot import boot
from musicgen.errors import InputError
from tooling.bench import report

parser = argparse.ArgumentParser(
    prog="python -m tooling.bench",
    description="Interleaved runs, each in a fresh process, of stock audiocraft (get_pretrained, generate, "
    "audio_write) and predict.py's Predictor on the same random-weight checkpoints (built once under "
    "<weights root>/bench/), with the same seed: times, memory, and whether the tokens are identical. "
    "Exit status 1 when they are not.",
)
report.add_arguments(parser)
arguments = parser.parse_args()
try:
    boot()
    sys.exit(report.main(arguments))
except InputError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
