"""`python -m tooling.readme`: write the settings table (musicgen.settings) into README.md.

The table sits between two marker lines; tests/test_settings.py fails when it is stale.
"""

from __future__ import annotations

import sys

from musicgen import atomic_files
from musicgen.settings import REPOSITORY, markdown_table

README = REPOSITORY / "README.md"
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def with_table(text: str) -> str:
    """`text` (the README) with the settings table between its markers."""
    head, found, rest = text.partition(BEGIN)
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise ValueError(f"README.md needs the lines {BEGIN} and {END}")
    return f"{head}{BEGIN}\n{markdown_table()}\n{END}{tail}"


def main() -> int:
    text = README.read_text()
    if with_table(text) != text:
        atomic_files.write_text(README, with_table(text))
        print(f"{README}: settings table written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
