"""predict.py declares exactly the union of the two published schemas in ../shared/seeds/."""

import inspect
import re
import typing
from pathlib import Path

import pytest

from musicgen.cli import input_fields, load_predictor_class

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"
SEED_TYPES = {"string": str, "integer": int, "number": float, "boolean": bool}
EXPECTED_ORDER = [
    "model_version",
    "prompt",
    "input_audio",
    "duration",
    "continuation",
    "continuation_start",
    "continuation_end",
    "multi_band_diffusion",
    "normalization_strategy",
    "top_k",
    "top_p",
    "temperature",
    "classifier_free_guidance",
    "output_format",
    "seed",
]


def squash(text: str) -> str:
    return " ".join(text.split())


def parse_table_seed(text: str) -> list[dict]:
    """The seed rendered as a | Field | Type | Default value | Description | table."""
    body = text.split("|---|---|---|---|", 1)[1].split("Output schema", 1)[0]
    cells = [squash(cell) for cell in body.split("|")]
    fields = []
    for index in range(1, len(cells) - 3, 5):  # each row: "", name, type, default, description
        name, type_name, default, description = cells[index : index + 4]
        if not description:  # rows without a default shift the description left
            default, description = "", default
        maximum = re.search(r"Max: (\d+)", default)
        default = default.split(" Max:")[0]
        fields.append(
            {
                "name": name,
                "type": type_name,
                "default": default or None,
                "description": description,
                "maximum": int(maximum[1]) if maximum else None,
                "choices": None,
            }
        )
    return fields


def parse_list_seed(text: str) -> list[dict]:
    """The seed rendered as plain lines: name, type, [default], [Options: ...], description."""
    body = text.split("Field Type Default value Description", 1)[1].split("Output schema", 1)[0]
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    starts = [
        i
        for i in range(len(lines) - 1)
        if re.fullmatch(r"[a-z_]+", lines[i]) and lines[i + 1].split(" ")[0] in SEED_TYPES
    ]
    fields = []
    for start, end in zip(starts, starts[1:] + [len(lines)], strict=True):
        name, type_name, *rest = lines[start:end]
        choices = None
        if "Options:" in rest:
            at = rest.index("Options:")
            choices = [choice.strip() for choice in rest[at + 1].split(",")]
            del rest[at : at + 2]
        default, description = (rest[0], rest[1]) if len(rest) == 2 else (None, rest[0])
        fields.append(
            {
                "name": name,
                "type": type_name,
                "default": default,
                "description": description,
                "maximum": None,
                "choices": choices,
            }
        )
    return fields


def load_seeds() -> list[list[dict]]:
    paths = sorted(SEEDS.glob("*.txt"))
    assert len(paths) == 2, f"expected the two published schemas in {SEEDS} (../shared/seeds beside the clone)"
    seeds = []
    for path in paths:
        text = path.read_text()
        seeds.append(parse_table_seed(text) if "|---|" in text else parse_list_seed(text))
    return seeds


@pytest.fixture(scope="module")
def declared():
    """name -> (type, FieldInfo) for every predict() input, in declaration order."""
    predictor_class = load_predictor_class()
    types = input_fields(predictor_class)
    parameters = inspect.signature(predictor_class.predict).parameters
    return {name: (types[name][0], parameters[name].default, parameters[name].annotation) for name in types}


def test_seeds_parse_into_both_schemas():
    seeds = load_seeds()
    assert [len(seed) for seed in seeds] == [14, 14]
    assert {field["name"] for seed in seeds for field in seed} == set(EXPECTED_ORDER)


def test_names_and_order_are_the_union_of_the_seeds(declared):
    assert list(declared) == EXPECTED_ORDER
    for seed in load_seeds():
        seed_names = [field["name"] for field in seed]
        assert [name for name in declared if name in seed_names] == seed_names


def test_types_defaults_and_descriptions_match_every_seed(declared):
    for seed in load_seeds():
        for field in seed:
            value_type, info, annotation = declared[field["name"]]
            assert squash(info.description) == field["description"], field["name"]
            seed_type = SEED_TYPES.get(field["type"].split(" ")[0])
            if field["name"] == "input_audio":
                assert value_type.__name__ == "Path"  # a file input travels as a URI string
            elif seed_type is not None:
                assert value_type is seed_type, field["name"]
            if field["default"] is None:
                assert info.default is None, field["name"]
                assert typing.get_origin(annotation) in (typing.Union, type(int | None)), field["name"]
            elif value_type is bool:
                assert info.default is (field["default"] == "True"), field["name"]
            else:
                assert info.default == value_type(field["default"]), field["name"]
                assert type(info.default) is value_type, field["name"]
            if field["choices"] is not None:
                assert info.choices == field["choices"], field["name"]


def test_bounds_are_only_those_the_seeds_show(declared):
    maxima = {field["name"]: field["maximum"] for seed in load_seeds() for field in seed if field["maximum"]}
    assert maxima == {"duration": 60}
    for name, (_, info, _) in declared.items():
        assert info.le == maxima.get(name), name
        assert info.ge is None, name


def test_model_version_choices(declared):
    assert declared["model_version"][1].choices == ["melody", "large", "encode-decode"]
    assert declared["model_version"][1].default == "melody"
