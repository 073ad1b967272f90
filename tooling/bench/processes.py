"""Starting the bench's child processes: their command line, their environment, their failures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from musicgen.weights.layout import set_hub_environment

CHILD_MODULE = "tooling.bench.child"


def child_command(*args: str) -> list[str]:
    """`python -m tooling.bench.child ARGS...` with this interpreter."""
    return [sys.executable, "-m", CHILD_MODULE, *args]


def child_environment(root: Path, threads: int) -> dict[str, str]:
    """The same environment for both sides: caches at `root`, hub offline, `threads` threads."""
    env = dict(os.environ)
    set_hub_environment(env, root)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_child(command: list[str], env: dict[str, str], timeout: float, what: str) -> float:
    """Run a child to completion; its wall time in seconds. Raises with its output on failure."""
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-6000:]}"
        )
    return time.perf_counter() - start
