"""predict.py's inputs against the two published schemas in tests/data/published-schemas/: it declares exactly
their union (names, order, types, defaults, descriptions, bounds and choices), plus only the additions
helpers.py names: model_version choices after the published ones, optional inputs after the published inputs.

The seed parsers are in helpers.py (test_schema_generator.py reads the seeds too).
"""

import inspect
import typing

import pytest
from helpers import (
    ADDED_CHOICES,
    ADDED_DEFAULTS,
    ADDED_INPUTS,
    EXPECTED_ORDER,
    PUBLISHED_ORDER,
    SEED_TYPES,
    load_seeds,
    squash,
)

from musicgen.serving.entry_points import input_fields, load_predictor_class


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
    assert {field["name"] for seed in seeds for field in seed} == set(PUBLISHED_ORDER)


def test_names_and_order_are_the_union_of_the_seeds_then_the_additions(declared):
    assert list(declared) == EXPECTED_ORDER == PUBLISHED_ORDER + ADDED_INPUTS
    for seed in load_seeds():
        seed_names = [field["name"] for field in seed]
        assert [name for name in declared if name in seed_names] == seed_names


def test_every_added_input_is_optional_and_changes_nothing_when_left_out(declared):
    for name, neutral in ADDED_DEFAULTS.items():
        value_type, info, annotation = declared[name]
        assert info.default == neutral and info.choices is None, name
        if neutral is None:
            assert typing.get_origin(annotation) in (typing.Union, type(int | None)), name
            assert info.le is None and info.ge is None, name
    assert (declared["lora_scale"][1].ge, declared["lora_scale"][1].le) == (-1.0, 2.0)  # docs/lora.md


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
                assert info.choices == field["choices"] + ADDED_CHOICES.get(field["name"], []), field["name"]


def test_bounds_are_only_those_the_seeds_show(declared):
    """The published inputs' bounds are the seeds'; of the added ones only lora_scale has any."""
    maxima = {field["name"]: field["maximum"] for seed in load_seeds() for field in seed if field["maximum"]}
    assert maxima == {"duration": 60}
    bounds = {name: (info.ge, info.le) for name, (_, info, _) in declared.items() if (info.ge, info.le) != (None, None)}
    assert bounds == {"duration": (None, 60), "lora_scale": (-1.0, 2.0)}


def test_model_version_choices(declared):
    published = ["melody", "large", "encode-decode"]  # the published model's (the seeds list none)
    assert declared["model_version"][1].choices == published + ADDED_CHOICES["model_version"]
    assert declared["model_version"][1].default == "melody"
