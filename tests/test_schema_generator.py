"""The schema generator in tooling/schema: it writes the OpenAPI document `cog build` would
(the committed .cog/openapi_schema.json is current: predict.py's and train.py's documents merged),
agrees with predict.py as Python sees it and shows the published seeds, writes JSON as Go does,
and refuses what `cog build` would refuse.

predict.py itself against the published seeds is tested in test_published_schema.py; train.py's
document, BaseModel outputs and the merge in test_training_schema.py.
"""

import inspect
import json
import re
import textwrap
import typing

import pytest
from helpers import ADDED_CHOICES, EXPECTED_ORDER, load_seeds, squash

from musicgen.serving.cog_yaml import CogRefs
from musicgen.serving.entry_points import load_predictor_class
from tooling.schema import gojson, inputs, openapi

SEED_OUTPUT = {"format": "uri", "title": "Output", "type": "string"}
PREDICT_ONLY = CogRefs(predict="predict.py:Predictor")  # a cog.yaml without `train:`


@pytest.fixture(scope="module")
def document() -> dict:
    return json.loads(openapi.generate())


def in_order(properties: dict) -> dict:
    """Properties by x-order: the merged file sorts every object's keys."""
    return dict(sorted(properties.items(), key=lambda item: item[1]["x-order"]))


def properties_of(source: str) -> tuple[dict, dict]:
    """Input properties and the whole (compact) document for a small predict.py source."""
    fields, output = inputs.read_inputs(textwrap.dedent(source))
    document = json.loads(gojson.go_json(openapi.openapi_document(fields, output, "0.0.0")))
    return document["components"]["schemas"]["Input"]["properties"], document


def test_committed_schema_file_is_current():
    """.cog/openapi_schema.json is what the container (and `serve`) hands the runtime."""
    assert openapi.SCHEMA_FILE.is_file(), "run `python -m tooling.schema.openapi` to write .cog/openapi_schema.json"
    assert openapi.SCHEMA_FILE.read_text() == openapi.generate(), (
        "predict.py, train.py and .cog/openapi_schema.json disagree: run `python -m tooling.schema.openapi`"
    )


def test_schema_agrees_with_predict_py_as_python_sees_it(document):
    """The static reading (no import) and the imported Predictor give the same inputs."""
    components = document["components"]["schemas"]
    properties = in_order(components["Input"]["properties"])
    predict = load_predictor_class().predict
    hints = typing.get_type_hints(predict)
    parameters = [p for p in inspect.signature(predict).parameters.values() if p.name != "self"]
    assert list(properties) == [p.name for p in parameters]
    for order, parameter in enumerate(parameters):
        info, prop = parameter.default, properties[parameter.name]
        assert prop["x-order"] == order
        assert prop["description"] == info.description, parameter.name
        assert prop.get("default") == info.default and "default" in prop, parameter.name
        optional = type(None) in typing.get_args(hints[parameter.name])
        assert prop.get("nullable", False) is optional, parameter.name
        assert prop.get("maximum") == info.le and prop.get("minimum") == info.ge, parameter.name
        if info.choices:
            assert prop["allOf"] == [{"$ref": f"#/components/schemas/{parameter.name}"}]
            assert components[parameter.name]["enum"] == info.choices
        else:
            assert "allOf" not in prop and parameter.name not in components


def test_schema_shows_the_seeds(document):
    components = document["components"]["schemas"]
    properties = in_order(components["Input"]["properties"])
    assert list(properties) == EXPECTED_ORDER
    assert "required" not in components["Input"]  # every input has a default
    assert components["Output"] == SEED_OUTPUT
    json_types = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean"}
    for seed in load_seeds():
        for field in seed:
            prop = properties[field["name"]]
            assert squash(prop["description"]) == field["description"], field["name"]
            kind = prop.get("type") or components[field["name"]]["type"]
            if field["type"].split(" ")[0] in json_types:
                assert kind == json_types[field["type"].split(" ")[0]], field["name"]
            if field["default"] is None:
                assert prop["default"] is None and prop["nullable"] is True, field["name"]
            else:
                assert str(prop["default"]).lower() == field["default"].lower(), field["name"]
            if field["choices"]:
                assert components[field["name"]]["enum"] == field["choices"] + ADDED_CHOICES.get(field["name"], [])
    assert {name: prop["maximum"] for name, prop in properties.items() if "maximum" in prop} == {
        "duration": 60,
        "lora_scale": 2,
    }
    assert {name: prop["minimum"] for name, prop in properties.items() if "minimum" in prop} == {"lora_scale": -1}
    assert components["model_version"]["enum"] == [
        *("melody", "large", "encode-decode"),  # published
        *("melody-large", "stereo-large", "stereo-melody-large"),  # added (helpers.ADDED_CHOICES)
        *("small", "medium", "stereo-small", "stereo-medium", "stereo-melody"),
    ]
    assert properties["negative_prompt"] == {  # added (helpers.ADDED_INPUTS): an optional string, last
        "default": None,
        "description": properties["negative_prompt"]["description"],
        "nullable": True,
        "title": "Negative Prompt",
        "type": "string",
        "x-order": len(EXPECTED_ORDER) - 3,
    }
    assert properties["lora_weights"] == {  # added: an optional string (a URL: Cog does not fetch it)
        "default": None,
        "description": properties["lora_weights"]["description"],
        "nullable": True,
        "title": "Lora Weights",
        "type": "string",
        "x-order": len(EXPECTED_ORDER) - 2,
    }
    assert properties["lora_scale"] == {  # added: a number whose default changes nothing, last
        "default": 1,
        "description": properties["lora_scale"]["description"],
        "maximum": 2,
        "minimum": -1,
        "title": "Lora Scale",
        "type": "number",
        "x-order": len(EXPECTED_ORDER) - 1,
    }
    assert properties["input_audio"]["format"] == "uri"


def test_document_frame_is_cogs(document):
    assert document["openapi"] == "3.0.2"
    assert document["info"] == {"title": "Cog", "version": openapi.cog_version()}
    assert list(document["paths"]) == sorted(
        ["/", "/health-check", "/predictions", "/predictions/{prediction_id}/cancel"]
        + ["/trainings", "/trainings/{training_id}/cancel"]
    )
    assert list(document["components"]["schemas"]) == sorted(
        ["Input", "Output", "model_version", "normalization_strategy", "output_format"]
        + ["PredictionRequest", "PredictionResponse", "Status", "HTTPValidationError", "ValidationError"]
        + ["TrainingInput", "TrainingOutput", "TrainingRequest", "TrainingResponse"]
    )


def test_predict_only_cog_yaml_gives_the_compact_document(document):
    """Without `train:` cog build writes predict's document alone, compact (json.Marshal); with it,
    the merged file holds that document's parts unchanged."""
    compact = openapi.generate(PREDICT_ONLY)
    alone = json.loads(compact)
    assert "\n" not in compact and ": " not in compact.split('"description"')[0]
    assert compact.startswith('{"components":{"schemas":{"Input":{"properties":{"model_version":{"allOf":')
    assert '"top_p":{"default":0,' in compact and '"temperature":{"default":1,' in compact
    assert '"maximum":60,' in compact
    assert list(alone["paths"]) == ["/", "/health-check", "/predictions", "/predictions/{prediction_id}/cancel"]
    assert list(alone["components"]["schemas"]) == [
        "Input",
        "Output",
        "model_version",
        "normalization_strategy",
        "output_format",
        "PredictionRequest",
        "PredictionResponse",
        "Status",
        "HTTPValidationError",
        "ValidationError",
    ]
    assert list(alone["components"]["schemas"]["Input"]["properties"]) == EXPECTED_ORDER  # insertion order
    assert {key: document[key] for key in ("openapi", "info")} == {key: alone[key] for key in ("openapi", "info")}
    for name, schema in alone["components"]["schemas"].items():
        assert document["components"]["schemas"][name] == schema, name
    for path, item in alone["paths"].items():
        assert document["paths"][path] == item, path


def test_merged_json_is_written_the_way_go_writes_it():
    """json.MarshalIndent(merged, "", "  "): keys sorted everywhere, 2 spaces, no trailing newline."""
    text = openapi.generate()
    python = json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False)
    number = re.compile(r"(?<=[\s\[:])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?=,?\n)")  # a number alone as a value
    assert number.sub("N", text) == number.sub("N", python)  # Python's indent=2 + sort_keys layout
    numbers = number.findall(text)
    assert numbers and all(value == gojson.go_float(float(value)) for value in numbers)  # float64 as Go writes it
    assert not any(char in text for char in "<>&\u2028\u2029")  # Go escapes them
    assert text.startswith('{\n  "components": {\n    "schemas": {\n      "HTTPValidationError": {')
    assert not text.endswith("\n") and "\t" not in text
    assert '"default": 0.00001,' in text and '"minimum": 1e-7,' in text  # train.py's lr, through float64
    assert '"x-order": 0' in text and '"maximum": 60,' in text and '"schema": {}' in text


def test_go_json_rules():
    go, indent = gojson.go_json, gojson.go_json_indent
    assert go({"b": 1, "a": [0.0, 1.5, 1e21, 1e-7, 1e16, -0.0, 0.000001]}) == (
        '{"a":[0,1.5,1e+21,1e-7,10000000000000000,-0,0.000001],"b":1}'
    )
    assert go(gojson.Ordered(b=True, a=None)) == '{"b":true,"a":null}'
    assert go("<a & b>\u2028é\n") == '"\\u003ca \\u0026 b\\u003e\\u2028é\\n"'
    sample = {"z": [1, {"y": [], "x": {}}], "a": {"c": "<&>\u2029\t", "b": [2.5, -0.0, 1e-7, 4294967295, True, None]}}
    assert indent(sample) == (
        "{\n"
        '  "a": {\n'
        '    "b": [\n      2.5,\n      -0,\n      1e-7,\n      4294967295,\n      true,\n      null\n    ],\n'
        '    "c": "\\u003c\\u0026\\u003e\\u2029\\t"\n'
        "  },\n"
        '  "z": [\n    1,\n    {\n      "x": {},\n      "y": []\n    }\n  ]\n'
        "}"
    )
    plain = {"b": {"d": [1, 2, {}], "c": "é"}, "a": []}  # no Go-only escapes or exponents: Python's layout
    assert indent(plain) == json.dumps(plain, indent=2, sort_keys=True, ensure_ascii=False)
    assert indent(gojson.Ordered(b=1, a=2)) == '{\n  "a": 2,\n  "b": 1\n}'  # no order survives Unmarshal
    assert indent(1e21) == "1e+21" and indent(3) == "3" and indent(0.1) == "0.1"


def test_fragments_cog_build_writes_for_the_same_declarations():
    """Exact substrings cog's own integration tests expect from `cog build` for such inputs."""
    _, document = properties_of("""
        from cog import BasePredictor, Input, Path
        class Predictor(BasePredictor):
            def predict(self, data: dict, items: list[dict] = None, text: str = "hello",
                        count: int = Input(description="n", default=5, ge=1, le=2),
                        mode: str = Input(default="fast", choices=["fast", "good"]), image: Path = None) -> str:
                pass
        """)
    text = gojson.go_json(document)
    assert '"data":{"title":"Data","type":"object","x-order":0}' in text
    assert '"items":{"items":{"type":"object"},"title":"Items","type":"array","x-order":1}' in text
    assert '"default":"hello"' in text and '"default":5' in text and '"maximum":2' in text
    assert '"enum":["fast","good"]' in text
    assert '"required":["data","items","image"]' in text  # a None default on a non-Optional type


def test_optional_none_and_required_rules():
    properties, document = properties_of("""
        import typing
        import cog
        from cog import Input as In
        class Predictor(cog.BasePredictor):
            def predict(self, a: int = In(default=None), b: typing.Optional[int] = In(default=None),
                        c: "int | None" = None, d: typing.Union[None, str] = None, e: int | None = In()) -> cog.Path:
                pass
        """)
    assert document["components"]["schemas"]["Input"]["required"] == ["a"]
    assert "default" not in properties["a"] and "nullable" not in properties["a"]
    for name in "bcd":
        assert properties[name]["default"] is None and properties[name]["nullable"] is True
    assert "default" not in properties["e"] and properties["e"]["nullable"] is True
    assert document["components"]["schemas"]["Output"] == SEED_OUTPUT


def test_module_constants_resolve_like_cog():
    properties, document = properties_of("""
        from cog import BasePredictor, Input
        MODES = ["a", "b"]
        SIZES = {"small": 1, "big": 2}
        HELP = "from a constant"
        LIMIT = 9
        DEFAULT = "b"
        class Predictor(BasePredictor):
            def run(self, mode: str = Input(default=DEFAULT, choices=MODES + ["c"], description=HELP),
                    size: str = Input(default="big", choices=list(SIZES.keys())),
                    n: int = Input(default=1, le=LIMIT), x: int = Input(default=len(MODES))) -> str:
                pass
            def predict(self, ignored: int) -> str:
                pass
        """)
    schemas = document["components"]["schemas"]
    assert list(properties) == ["mode", "size", "n", "x"]  # run() wins over predict()
    assert schemas["mode"]["enum"] == ["a", "b", "c"] and properties["mode"]["default"] == "b"
    assert properties["mode"]["description"] == "from a constant"
    assert schemas["size"]["enum"] == ["small", "big"]
    assert "maximum" not in properties["n"]  # cog reads ge/le from literals only
    assert schemas["Input"]["required"] == ["x"]  # an unresolvable Input default counts as None


def test_strings_are_taken_as_written():
    properties, _ = properties_of(r"""
        from cog import BasePredictor, Input
        class Predictor(BasePredictor):
            def predict(self, s: str = Input(default="a\tb", description='it\'s')) -> str:
                pass
        """)
    assert properties["s"]["default"] == "a\\tb" and properties["s"]["description"] == "it\\'s"


@pytest.mark.parametrize(
    "declaration, message",
    [
        ("x: int = compute()", "cannot be statically resolved"),
        ("x: int = Input(default_factory=list)", "default_factory"),
        ("x: set = None", "not supported"),
        ("x = 3", "no type annotation"),
        ("x: str = Input(choices=pick())", "choices expression"),
        ("x: int = Input(accept='audio/*')", "accept is only valid"),
        ("x: int = cog.Input(default=1)", "cannot be statically resolved"),  # cog matches `Input` by name
    ],
)
def test_what_cog_build_would_refuse_is_refused(declaration, message):
    with pytest.raises(inputs.SchemaError, match=message):
        properties_of(f"""
            from cog import BasePredictor, Input
            class Predictor(BasePredictor):
                def predict(self, {declaration}) -> str:
                    pass
            """)
