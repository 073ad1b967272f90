"""The settings module: every environment variable the service reads, declared once, checked once.

Bad values stop the start with one SettingsError naming the variable, the value and what is
allowed; docs/settings.md's table is the module's; no other serving module reads the environment.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
from helpers import run_cli

from musicgen.errors import SettingsError
from musicgen.settings import REPOSITORY, SETTINGS, Settings, read_settings
from musicgen.versions import GENERATING, PRELOADED
from tooling.readme import SETTINGS_DOC, TABLES, with_table

BAD_VALUES = {
    "MUSICGEN_MODEL_VERSIONS": ["melody, xl", "encode-decode", ",,"],
    "MUSICGEN_DEVICE": ["gpu", "cuda:x", "mps"],
    "MUSICGEN_TOKEN_LOOP": ["fast", "Audiocraft"],
    "MUSICGEN_GPU_MEMORY_GB": ["lots", "-3", "0", "inf", "nan"],
    "MUSICGEN_DOWNLOAD_ON_SETUP": ["maybe", "2"],
    "MUSICGEN_INPUT_TIMEOUT": ["0", "soon", "-1", "inf"],
    "MUSICGEN_INPUT_MAX_MB": ["-1", "inf", "big"],
    "COG_MAX_CONCURRENCY": ["0", "two", "1.5", "-2"],
    "ONEDNN_PRIMITIVE_CACHE_CAPACITY": ["0", "many"],
    "HF_ENDPOINT": ["huggingface.co", "ftp://mirror"],
}


def test_each_setting_fills_one_field_and_unset_means_the_default():
    assert sorted(setting.field for setting in SETTINGS) == sorted(field.name for field in dataclasses.fields(Settings))
    assert len({setting.variable for setting in SETTINGS}) == len(SETTINGS)
    assert read_settings({}) == Settings()
    assert read_settings({setting.variable: "  " for setting in SETTINGS}) == Settings()  # empty: unset
    # a default the README writes as one value is the dataclass's default
    for setting in SETTINGS:
        literal = setting.default.strip("`")
        if setting.default.count("`") == 2 and setting.default.startswith("`") and setting.default.endswith("`"):
            if setting.field != "weights_root":
                assert setting.parse(literal) == getattr(Settings(), setting.field), setting.variable


def test_good_values_are_read():
    settings = read_settings(
        {
            "MUSICGEN_WEIGHTS": "/srv/weights/",
            "COG_WEIGHTS": "https://example.com/tuned.bin",
            "MUSICGEN_MODEL_VERSIONS": " stereo-large, melody ,stereo-large",
            "MUSICGEN_DEVICE": "cuda:1",
            "MUSICGEN_TOKEN_LOOP": "audiocraft",
            "MUSICGEN_GPU_MEMORY_GB": "70.5",
            "MUSICGEN_DOWNLOAD_ON_SETUP": "Yes",
            "MUSICGEN_INPUT_TIMEOUT": "30",
            "MUSICGEN_INPUT_MAX_MB": "2.5",
            "COG_MAX_CONCURRENCY": "2",
            "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024",
            "HF_ENDPOINT": "http://127.0.0.1:8080/",
            "HF_TOKEN": "hf_x",
        }
    )
    assert settings == Settings(
        weights_root=Path("/srv/weights"),
        fine_tuned="https://example.com/tuned.bin",
        model_versions=("stereo-large", "melody"),
        device="cuda:1",
        token_loop="audiocraft",
        memory_budget_gb=70.5,
        download_on_setup=True,
        input_timeout=30.0,
        input_max_mb=2.5,
        runtime_slots=2,
        onednn_cache_entries=1024,
        hub_endpoint="http://127.0.0.1:8080",
        hub_token="hf_x",
    )
    assert Settings().model_versions == PRELOADED


@pytest.mark.parametrize(
    ("variable", "value"), [(name, value) for name, values in BAD_VALUES.items() for value in values]
)
def test_a_bad_value_is_one_error_naming_the_variable_the_value_and_what_is_allowed(variable, value):
    [setting] = [setting for setting in SETTINGS if setting.variable == variable]
    with pytest.raises(SettingsError) as error:
        read_settings({variable: value})
    message = str(error.value)
    assert message.startswith(f"{variable}={value!r} is not allowed: use {setting.allowed}"), message
    assert message.endswith(f"or leave it unset for the default ({setting.default.replace('`', '')}).")


def test_every_generating_version_may_be_preloaded():
    text = ",".join(GENERATING)
    assert read_settings({"MUSICGEN_MODEL_VERSIONS": text}).model_versions == tuple(GENERATING)


def test_the_generated_tables_are_the_modules():
    """docs/settings.md's settings table (and the README's model table, weights/README.md's layout)
    are what tooling.readme writes from the modules."""
    for path, name, table in TABLES:
        text = path.read_text()
        assert with_table(text, name, table()) == text, (
            f"{path}'s {name} table is stale: run `python -m tooling.readme`"
        )
    text = SETTINGS_DOC.read_text()
    for setting in SETTINGS:
        assert f"| `{setting.variable}` |" in text


def _environment_reads(path: Path) -> list[str]:
    """Where `path` reads os.environ or os.getenv; writes (`os.environ[name] = ...`) and handing
    os.environ to set_hub_environment (which writes into it) are not reads."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    reads = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")):
            continue
        parent = parents[node]
        if isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store):
            continue
        if isinstance(parent, ast.Call) and getattr(parent.func, "id", None) == "set_hub_environment":
            continue
        reads.append(f"{path.relative_to(REPOSITORY)}:{node.lineno}")
    return reads


def test_only_the_settings_module_reads_the_environment():
    serving = [REPOSITORY / "predict.py", REPOSITORY / "train.py"]
    serving += [path for path in (REPOSITORY / "musicgen").rglob("*.py") if "dev" not in path.parts]
    reads = [read for path in serving if path.name != "settings.py" for read in _environment_reads(path)]
    assert reads == []
    assert _environment_reads(REPOSITORY / "musicgen" / "settings.py")  # the check sees a read where there is one


@pytest.mark.slow
def test_a_bad_setting_stops_setup_and_the_command_line_before_any_model_loads(demo_weights, tmp_path, monkeypatch):
    from musicgen.serving.entry_points import load_predictor_class

    monkeypatch.setenv("MUSICGEN_TOKEN_LOOP", "fast")
    with pytest.raises(SettingsError, match="MUSICGEN_TOKEN_LOOP='fast' is not allowed: use `musicgen`, `audiocraft`"):
        load_predictor_class()().setup()
    monkeypatch.delenv("MUSICGEN_TOKEN_LOOP")

    monkeypatch.setenv("MUSICGEN_INPUT_TIMEOUT", "soon")
    done = run_cli("predict", "-i", "prompt=calm", "-o", "out.wav", cwd=tmp_path, weights=demo_weights)
    assert done.returncode == 2
    assert "error: MUSICGEN_INPUT_TIMEOUT='soon' is not allowed: use a positive number of seconds" in done.stderr
    assert "Traceback" not in done.stderr and "loaded" not in done.stderr
    assert not (tmp_path / "out.wav").exists()


def test_the_token_loops_old_name_is_still_read_with_a_deprecation_line(caplog):
    """MUSICGEN_DECODER was the token loop's setting; it is read as MUSICGEN_TOKEN_LOOP, saying so."""
    with caplog.at_level("WARNING", logger="musicgen.settings"):
        assert read_settings({"MUSICGEN_DECODER": "audiocraft"}).token_loop == "audiocraft"
    assert "MUSICGEN_DECODER is deprecated: set MUSICGEN_TOKEN_LOOP instead" in caplog.text
    both = {"MUSICGEN_DECODER": "audiocraft", "MUSICGEN_TOKEN_LOOP": "musicgen"}
    assert read_settings(both).token_loop == "musicgen"  # the new name wins
    with pytest.raises(SettingsError, match=r"^MUSICGEN_DECODER='ours' is not allowed: use `musicgen`, `audiocraft`"):
        read_settings({"MUSICGEN_DECODER": "ours"})
