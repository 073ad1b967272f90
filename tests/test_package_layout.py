"""The package's shape: no import cycle (function-level imports included), the product never imports
the tooling (tooling/, beside it, which the wheel and the image leave out), a root of at most 12
modules, one boot, and no module grows past what one concern needs."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from musicgen.settings import REPOSITORY

PACKAGE = REPOSITORY / "musicgen"
TOOLING = REPOSITORY / "tooling"
MAX_LINES = 350
MAX_ROOT_MODULES = 12  # .py files flat in musicgen/, __init__.py and __main__.py included
# Longer, but one concern that reads top to bottom.
ONE_CONCERN = {"musicgen.weights.download": "a resumable, verified HTTP download of the manifest's files"}
SERVING = ("predict", "streaming.predict", "musicgen.serving.service")  # what the Cog worker imports to serve


def module_name(path: Path) -> str:
    parts = path.relative_to(REPOSITORY).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    """The product's modules (musicgen/, predict.py, train.py) and the tooling's."""
    found = {module_name(path): path for folder in (PACKAGE, TOOLING) for path in folder.rglob("*.py")}
    found["predict"] = REPOSITORY / "predict.py"
    found["streaming.predict"] = REPOSITORY / "streaming" / "predict.py"
    found["train"] = REPOSITORY / "train.py"
    return found


def product() -> dict[str, Path]:
    return {name: path for name, path in sources().items() if not name.startswith("tooling")}


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of ours `path` imports, anywhere in the file (inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    modules = sources()
    return {name: imports(path, modules) - {name} for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


def test_no_import_cycle_inside_the_package():
    edges = graph()
    assert "musicgen.weights.layout" in edges["musicgen.weights.store"]  # the graph sees our imports
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_the_foundations_import_only_plain_data():
    """versions (the model table) imports nothing of ours; settings only errors and versions; the
    weights layout only those; the input rules only errors: any module may import them."""
    edges = graph()
    assert edges["musicgen.versions"] == set()
    assert edges["musicgen.settings"] == {"musicgen.errors", "musicgen.versions"}
    assert edges["musicgen.weights.layout"] == {"musicgen.settings", "musicgen.versions"}
    assert edges["musicgen.input_rules"] == {"musicgen.errors"}


def test_the_lower_layers_never_import_the_request():
    """audio/, decode/, models/, train/ and weights/ read limits from musicgen.input_rules: only the
    prediction's own modules (service, generate, runner, cli) know musicgen.request."""
    lower = ("musicgen.audio.", "musicgen.tokens.", "musicgen.models.", "musicgen.train.", "musicgen.weights.")
    climbing = sorted(
        name for name, targets in graph().items() if name.startswith(lower) and "musicgen.request" in targets
    )
    assert climbing == []


def reached_from(*names: str) -> set[str]:
    edges = graph()
    reached, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(edges.get(name, ()))
    return reached


def test_serving_never_imports_the_tooling():
    reached = reached_from(*SERVING)
    assert "musicgen.models.load" in reached and "musicgen.generate" in reached
    assert not [name for name in reached if name.startswith(("tooling", "musicgen.cli", "musicgen.serving.launch"))]
    # `serve` (which execs the server) reads cog.yaml itself, without the tooling
    assert "musicgen.serving.cog_yaml" in reached_from("musicgen.serving.launch")
    assert not [name for name in reached_from("musicgen.serving.launch") if name.startswith("tooling")]


def test_the_layers_arithmetic_is_written_once():
    """Every form of the step runs musicgen.tokens.layer.run_layers: no other module of the product
    norms a layer's input or runs its feed-forward block."""
    text = "\n".join(path.read_text() for name, path in product().items())
    assert text.count(".norm1(") == 1 and text.count(".linear2(") == 1


def test_no_module_is_longer_than_one_concern_needs():
    lengths = {name: len(path.read_text().splitlines()) for name, path in sources().items() if name != "predict"}
    assert not {name: lines for name, lines in lengths.items() if lines > MAX_LINES and name not in ONE_CONCERN}


@pytest.mark.slow
def test_the_wheel_holds_every_module_and_its_command_line_runs_outside_the_checkout(tmp_path):
    """`pip wheel .` (built from a copy: building writes build/ beside pyproject.toml), unpacked
    into a folder of its own, put first on the path: `python -m musicgen --help` runs from it."""
    source = tmp_path / "source"
    shutil.copytree(PACKAGE, source / "musicgen", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPOSITORY / "pyproject.toml", source)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run([*build, str(source)], check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("musicgen_cog-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packed = {name for name in archive.namelist() if name.endswith(".py")}
        archive.extractall(tmp_path / "site")
    assert packed == {path.relative_to(REPOSITORY).as_posix() for path in PACKAGE.rglob("*.py")}

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    code = "import musicgen, sys; print(musicgen.__file__)"
    where = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert where.stdout.strip() == str(tmp_path / "site" / "musicgen" / "__init__.py"), where.stderr
    done = subprocess.run(
        [sys.executable, "-m", "musicgen", "--help"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for command in ("predict", "train", "demo-weights", "download", "serve"):
        assert command in done.stdout
    assert not [name for name in packed if name.startswith("tooling/")]


def test_the_layout_in_the_docs_names_every_module():
    """docs/architecture.md's layout names each module: its path, or its folder and its file name
    (a folder's line lists its files)."""
    text = (REPOSITORY / "docs" / "architecture.md").read_text().split("## Layout", 1)[1]
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        relative = path.relative_to(REPOSITORY).as_posix()
        folder = path.parent.relative_to(REPOSITORY).as_posix() + "/"
        if relative not in text and not (folder in text and re.search(rf"\b{re.escape(path.name)}\b", text)):
            missing.append(relative)
    assert missing == []
