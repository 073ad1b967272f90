"""cog.yaml is complete for `cog build` on a GPU machine and follows cog 0.23.1's configuration rules.

The rules are those of cog's published schema (pkg/config/data/config_schema_v1.0.json) and of its
semantic checks (pkg/config/validate.go), restated here: the `cog` CLI cannot run without Docker.
"""

import re
from pathlib import Path

import pytest
import yaml

from musicgen.serving.cog_yaml import CogRefs, cog_refs
from musicgen.settings import REPOSITORY
from tooling.schema import inputs, openapi

COG_YAML = REPOSITORY / "cog.yaml"
# The CUDA each pinned torch's PyPI Linux wheel is built against (its Requires-Dist lists
# cuda-toolkit==13.0.2 and nvidia-cudnn-cu13 for torch 2.11.0). cog then installs torch+cu130.
TORCH_CUDA = {"2.11.0": "13.0"}

STRING_LISTS = (list, type(None))
TOP_LEVEL = {
    "build": dict,
    "image": str,
    "model": str,
    "run": str,
    "predict": str,
    "train": str,
    "concurrency": dict,
    "observability": dict,
    "environment": STRING_LISTS,
    "weights": STRING_LISTS,
}
BUILD = {
    "cuda": str,
    "cudnn": str,
    "gpu": bool,
    "python_version": (str, int, float),
    "python_packages": STRING_LISTS,
    "pre_install": STRING_LISTS,
    "python_requirements": str,
    "system_packages": STRING_LISTS,
    "sdk_version": str,
    "run": STRING_LISTS,
}
RUN_ITEM = {"command": str, "mounts": list}


def config_errors(config: object, project: Path) -> list[str]:
    """Every way `config` breaks cog's configuration schema and semantic checks."""
    if not isinstance(config, dict):
        return ["cog.yaml must be a mapping"]
    errors = []

    def check_keys(mapping: dict, allowed: dict, where: str) -> None:
        for key, value in mapping.items():
            if key not in allowed:
                errors.append(f"{where}{key}: unknown key")
            elif not isinstance(value, allowed[key]) or (allowed[key] is not bool and isinstance(value, bool)):
                errors.append(f"{where}{key}: wrong type {type(value).__name__}")

    check_keys(config, TOP_LEVEL, "")
    if config.get("run") and config.get("predict"):
        errors.append("only one of run or predict can be set")
    for key in ("run", "predict", "train"):
        if isinstance(config.get(key), str) and len(config[key].split(".py:")) != 2:
            errors.append(f"{key}: must look like 'predict.py:Predictor'")
    for item in config.get("environment") or []:
        if not (isinstance(item, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", item)):
            errors.append(f"environment: {item!r} is not NAME=value")
    concurrency = config.get("concurrency")
    if isinstance(concurrency, dict):
        check_keys(concurrency, {"max": int, "default_target": int}, "concurrency.")
        if "max" not in concurrency:
            errors.append("concurrency.max is required")

    build = config.get("build")
    if not isinstance(build, dict):
        return errors
    check_keys(build, BUILD, "build.")
    for key in ("python_packages", "pre_install", "system_packages"):
        if any(not isinstance(item, str) for item in build.get(key) or []):
            errors.append(f"build.{key}: every item must be a string")
    for item in build.get("run") or []:
        if isinstance(item, dict):
            check_keys(item, RUN_ITEM, "build.run[].")
            if "command" not in item:
                errors.append("build.run[]: command is required")
        elif not isinstance(item, str):
            errors.append("build.run[]: must be a string or {command, mounts}")

    version = str(build.get("python_version", ""))
    if not re.fullmatch(r"\d+\.\d+(\.\d+)?", version):
        errors.append("build.python_version is required, as major.minor")
    elif tuple(int(part) for part in version.split(".")[:2]) < (3, 10):
        errors.append("build.python_version: minimum supported Python version is 3.10")
    if build.get("python_packages") and build.get("python_requirements"):
        errors.append("only one of python_packages or python_requirements can be set, not both")
    requirements = build.get("python_requirements")
    if isinstance(requirements, str) and not (project / requirements).is_file():
        errors.append(f"build.python_requirements: {requirements} does not exist")
    cuda = build.get("cuda")
    if isinstance(cuda, str):
        parts = cuda.split(".")
        if len(parts) < 2 or not all(part.isdigit() for part in parts):
            errors.append("build.cuda: must include both major and minor versions (e.g. '11.8')")
        elif int(parts[0]) < 11:
            errors.append("build.cuda: minimum supported CUDA version is 11")
    return errors


def requirement_lines(path: Path) -> list[str]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def pins(lines: list[str]) -> dict[str, str]:
    """name (normalized) -> version, for `name==version` lines."""
    result = {}
    for line in lines:
        name, sep, version = line.partition("==")
        assert sep and version and " " not in line, f"not an exact pin: {line!r}"
        result[re.sub(r"[-_.]+", "-", name).lower()] = version
    return result


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(COG_YAML.read_text())


def test_cog_yaml_follows_cogs_configuration_rules(config):
    assert config_errors(config, REPOSITORY) == []


@pytest.mark.parametrize(
    "broken, message",
    [
        ({"build": {"python_version": "3.11", "gpus": True}}, "build.gpus: unknown key"),
        ({"build": {"python_version": "3.11"}, "predictor": "predict.py:Predictor"}, "predictor: unknown key"),
        ({"build": {"python_version": "3.11", "gpu": "yes"}}, "build.gpu: wrong type"),
        ({"build": {"python_version": 3.11, "system_packages": "ffmpeg"}}, "build.system_packages: wrong type"),
        ({"build": {"python_version": "3.9"}}, "minimum supported Python"),
        ({"build": {"gpu": True}}, "python_version is required"),
        (
            {
                "build": {
                    "python_version": "3.11",
                    "python_packages": ["x==1"],
                    "python_requirements": "requirements.txt",
                }
            },
            "only one of python_packages",
        ),
        ({"build": {"python_version": "3.11", "python_requirements": "missing.txt"}}, "does not exist"),
        ({"build": {"python_version": "3.11", "cuda": "13"}}, "major and minor"),
        ({"build": {"python_version": "3.11", "run": [{"mounts": []}]}}, "command is required"),
        ({"build": {"python_version": "3.11"}, "predict": "predict:Predictor"}, "must look like"),
        (
            {"build": {"python_version": "3.11"}, "run": "run.py:Runner", "predict": "predict.py:Predictor"},
            "only one of run or predict",
        ),
    ],
)
def test_the_rules_catch_broken_configs(broken, message):
    assert any(message in error for error in config_errors(broken, REPOSITORY)), config_errors(broken, REPOSITORY)


def test_gpu_image_with_cuda_of_the_pinned_torch(config):
    build = config["build"]
    assert build["gpu"] is True
    assert build["python_version"] == "3.11"
    assert "ffmpeg" in build["system_packages"]
    cuda_pins = pins(requirement_lines(REPOSITORY / build["python_requirements"]))
    assert cuda_pins["torch"] == cuda_pins["torchaudio"], "torchaudio builds are made for one torch release"
    assert build["cuda"] == TORCH_CUDA[cuda_pins["torch"]]


def test_cuda_requirements_are_the_cpu_pins_plus_torch(config):
    """cog copies python_requirements alone into the image: no `-r` includes, every pin repeated."""
    cuda_lines = requirement_lines(REPOSITORY / config["build"]["python_requirements"])
    assert not [line for line in cuda_lines if line.startswith("-")], "options / -r includes are not carried"
    cuda_pins, cpu_pins = pins(cuda_lines), pins(requirement_lines(REPOSITORY / "requirements.txt"))
    managed = {"cog", "coglet"}  # installed by cog itself from build.sdk_version
    assert {name: cpu_pins[name] for name in cpu_pins.keys() - managed} == {
        name: version for name, version in cuda_pins.items() if name not in ("torch", "torchaudio")
    }
    assert not managed & cuda_pins.keys() and "audiocraft" not in cuda_pins


def test_sdk_and_audiocraft_pins(config):
    build = config["build"]
    cpu_pins = pins(requirement_lines(REPOSITORY / "requirements.txt"))
    assert build["sdk_version"] == openapi.cog_version() == cpu_pins["cog"] == cpu_pins["coglet"]
    assert any(re.search(r"pip install --no-deps .*audiocraft==1\.3\.0$", command) for command in build["run"])


def test_refs_name_the_predictor_and_the_trainer(config):
    """`predict:` a class with run()/predict(), `train:` a function: both read statically."""
    refs = cog_refs()
    assert (
        refs
        == CogRefs(predict=config["predict"], train=config["train"])
        == CogRefs("predict.py:Predictor", "train.py:train")
    )
    assert "run" not in config  # only one of run / predict
    for ref, mode in ((refs.predict, inputs.PREDICT), (refs.train, inputs.TRAIN)):
        file_name, name = ref.split(":")
        fields, _ = inputs.read_inputs((REPOSITORY / file_name).read_text(), name, mode)
        assert fields, ref


@pytest.mark.parametrize(
    "text, refs",
    [
        ('predict: "predict.py:Predictor"\n', CogRefs("predict.py:Predictor")),
        ('run: "run.py:Runner"\ntrain: "train.py:train"\n', CogRefs("run.py:Runner", "train.py:train")),
        ('train: "train.py:Trainer"\n', CogRefs(None, "train.py:Trainer")),
        ('run: "a.py:A"\npredict: "b.py:B"\n', "only one of run or predict"),
        ('predict: "predict.py:Predictor"\ntrain: "train:train"\n', "`train:` must be in the form"),
        ('predict: "predict.Predictor"\n', "`predict:` must be in the form"),
        ("build:\n  gpu: false\n", "no predict or train reference"),
    ],
)
def test_refs_are_read_as_cog_reads_them(tmp_path, text, refs):
    """pkg/config/parse.go and validate.go: `run:` is `predict:`, `train:` is optional, refs are "x.py:Name"."""
    (tmp_path / "cog.yaml").write_text(text)
    if isinstance(refs, str):
        with pytest.raises(ValueError, match=refs):
            cog_refs(tmp_path / "cog.yaml")
    else:
        assert cog_refs(tmp_path / "cog.yaml") == refs


def test_docker_context_leaves_out_the_virtualenv():
    ignored = requirement_lines(REPOSITORY / ".dockerignore")
    assert ".venv/" in ignored and ".git/" in ignored
    assert not any(line.startswith(("weights", ".cog", "predict", "musicgen")) for line in ignored)
