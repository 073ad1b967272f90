"""train.py's document and the merge `cog build` makes when cog.yaml has `train:` (tooling/schema).

The committed file is the merge (test_schema_generator.py checks it is current and written as Go
writes it); here: TrainingInput agrees with train.py as Python sees it, the training parts carry
cog's names, BaseModel outputs and train targets are read as cog's static parser reads them, and
predict's document wins where both name the same thing.
"""

import inspect
import json
import textwrap
import typing

import pytest

from musicgen.errors import InputError
from musicgen.serving.cog_yaml import CogRefs
from musicgen.serving.entry_points import load_predictor_class, load_train_function
from tooling.schema import inputs, openapi

REF = "#/components/schemas/"
TRAINING_OUTPUT = {  # train.py's TrainingOutput(BaseModel): weights: Path; titled "Output" by cog
    "properties": {"weights": {"format": "uri", "title": "Weights", "type": "string"}},
    "required": ["weights"],
    "title": "Output",
    "type": "object",
}


@pytest.fixture(scope="module")
def document() -> dict:
    return json.loads(openapi.generate())


def read(source: str, target: str = "train", mode: str = inputs.TRAIN) -> tuple[list, dict]:
    return inputs.read_inputs(textwrap.dedent(source), target, mode)


def test_training_input_agrees_with_train_py_as_python_sees_it(document):
    """The static reading (no import) and the imported train() give the same inputs, in order."""
    components = document["components"]["schemas"]
    schema = components["TrainingInput"]
    train = load_train_function()
    hints = typing.get_type_hints(train)
    parameters = list(inspect.signature(train).parameters.values())
    properties = dict(sorted(schema["properties"].items(), key=lambda item: item[1]["x-order"]))
    assert list(properties) == [p.name for p in parameters]
    assert schema["title"] == "TrainingInput" and schema["type"] == "object"
    required = []
    for order, parameter in enumerate(parameters):
        info, prop, name = parameter.default, properties[parameter.name], parameter.name
        assert prop["x-order"] == order, name
        assert prop["description"] == info.description, name
        optional = type(None) in typing.get_args(hints[name])
        assert prop.get("nullable", False) is optional, name
        if info.default is None and not optional:  # Input() without a default: required
            required.append(name)
            assert "default" not in prop, name
        else:
            assert "default" in prop and prop["default"] == info.default, name
        assert prop.get("maximum") == info.le and prop.get("minimum") == info.ge, name
        if info.choices:
            assert prop["allOf"] == [{"$ref": REF + name}] and "type" not in prop, name
        else:
            assert "allOf" not in prop, name
    assert schema.get("required", []) == required == ["dataset_path"]
    assert properties["dataset_path"]["format"] == "uri"


def test_the_schemas_bounds_are_the_ones_training_enforces(document):
    """train.py's ge/le (what the runtime checks) and musicgen.train.options.validate (what the CLI
    and Python callers are held to) allow the same values."""
    from musicgen.train.options import TrainRequest, validate

    properties = document["components"]["schemas"]["TrainingInput"]["properties"]
    bounded = {name: prop for name, prop in properties.items() if "maximum" in prop}
    assert set(bounded) == {"epochs", "batch_size", "lr", "warmup_steps", "cfg_p", "lora_rank"}
    for name, prop in bounded.items():
        low, high = prop["minimum"], prop["maximum"]
        step = 1 if prop["type"] == "integer" else (high - low) / 1000
        for value in (low, high):  # allowed: validate goes on to the missing dataset_path
            with pytest.raises(InputError, match="dataset_path is required"):
                validate(TrainRequest(dataset_path=None, **{name: value}))
        for value in (low - step, high + step):
            with pytest.raises(InputError, match=f"^{name}=.* is out of range"):
                validate(TrainRequest(dataset_path=None, **{name: value}))


def test_model_version_is_the_shared_enum_with_predicts_choices(document):
    """Both documents name their enum `model_version`: the merge keeps predict's (one component)."""
    components = document["components"]["schemas"]
    predicted = inspect.signature(load_predictor_class().predict).parameters["model_version"].default
    trained = inspect.signature(load_train_function()).parameters["model_version"].default
    assert components["TrainingInput"]["properties"]["model_version"]["allOf"] == [{"$ref": REF + "model_version"}]
    assert components["Input"]["properties"]["model_version"]["allOf"] == [{"$ref": REF + "model_version"}]
    assert components["model_version"]["enum"] == predicted.choices
    # Train's own choices could not differ: they would be dropped by the merge, without a word.
    assert trained.choices == predicted.choices and trained.default == predicted.default


def test_training_parts_carry_cogs_names(document):
    components, paths = document["components"]["schemas"], document["paths"]
    assert components["TrainingOutput"] == TRAINING_OUTPUT
    assert components["TrainingRequest"] == {
        "properties": {"id": {"title": "Id", "type": "string"}, "input": {"$ref": REF + "TrainingInput"}},
        "title": "TrainingRequest",
        "type": "object",
    }
    response = components["TrainingResponse"]
    prediction = components["PredictionResponse"]
    assert response["title"] == "TrainingResponse" and set(response["properties"]) == set(prediction["properties"])
    assert response["properties"]["input"] == {"$ref": REF + "TrainingInput"}
    assert response["properties"]["output"] == {"$ref": REF + "TrainingOutput"}
    post = paths["/trainings"]["post"]
    assert (post["summary"], post["description"], post["operationId"]) == (
        "Train",
        "Run a single training on the model",
        "train_trainings_post",
    )
    assert post["requestBody"]["content"]["application/json"]["schema"] == {"$ref": REF + "TrainingRequest"}
    assert post["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": REF + "TrainingResponse"}
    assert post["responses"]["422"] == paths["/predictions"]["post"]["responses"]["422"]
    cancel = paths["/trainings/{training_id}/cancel"]["post"]
    assert cancel["operationId"] == "cancel_trainings__training_id__cancel_post" and cancel["summary"] == "Cancel"
    assert cancel["parameters"] == [
        {"in": "path", "name": "training_id", "required": True, "schema": {"title": "Training Id", "type": "string"}}
    ]


def test_train_only_cog_yaml_gives_the_compact_training_document():
    text = openapi.generate(CogRefs(predict=None, train="train.py:train"))
    alone = json.loads(text)
    assert "\n" not in text and text.startswith('{"components":{"schemas":{"TrainingInput":{"properties":{')
    assert list(alone["paths"]) == ["/", "/health-check", "/trainings", "/trainings/{training_id}/cancel"]
    assert list(alone["components"]["schemas"])[:3] == ["TrainingInput", "TrainingOutput", "model_version"]
    assert alone["components"]["schemas"]["TrainingOutput"] == TRAINING_OUTPUT
    assert '"lr":{"default":0.00001,' in text and '"minimum":1e-7,' in text


def test_predicts_document_wins_where_both_name_a_part(tmp_path):
    (tmp_path / "predict.py").write_text(
        textwrap.dedent("""
        from cog import BasePredictor, Input
        class Predictor(BasePredictor):
            def predict(self, mode: str = Input(default="a", choices=["a", "b"])) -> str:
                pass
        """)
    )
    (tmp_path / "train.py").write_text(
        textwrap.dedent("""
        from cog import Input, Path
        def train(mode: str = Input(default="c", choices=["c"]), steps: int = 2) -> Path:
            pass
        """)
    )
    text = openapi.generate(CogRefs("predict.py:Predictor", "train.py:train"), root=tmp_path)
    merged = json.loads(text)
    schemas = merged["components"]["schemas"]
    assert schemas["mode"]["enum"] == ["a", "b"]  # train's ["c"] is dropped
    assert schemas["TrainingInput"]["properties"]["mode"] == {
        "allOf": [{"$ref": REF + "mode"}],
        "default": "c",
        "x-order": 0,
    }
    assert schemas["TrainingOutput"] == {"format": "uri", "title": "Output", "type": "string"}
    assert text == json.dumps(merged, indent=2, sort_keys=True, ensure_ascii=False)
    (tmp_path / "cog.yaml").write_text('predict: "predict.py:Predictor"\ntrain: "train.py:train"\n')
    assert openapi.generate(root=tmp_path) == text  # the refs come from root/cog.yaml


def test_base_model_outputs_as_cogs_static_parser_reads_them():
    _, output = read("""
        from typing import List, Optional
        import cog
        from pydantic import BaseModel as Model
        class Old(Model):
            gone: int
        class Old(Model):  # a later class of the same name replaces the earlier one
            weights: cog.Path
            loss: float = 0.5
            notes: Optional[str]
            files: List[cog.Path]
            extra: dict
            flag: bool = compute()  # a default cog cannot read: still required
            def method(self) -> int:
                pass
        def train(n: int) -> "Old":
            pass
        """)
    assert output == {
        "type": "object",
        "title": "Output",
        "properties": {
            "weights": {"type": "string", "format": "uri", "title": "Weights"},
            "loss": {"type": "number", "title": "Loss"},
            "notes": {"type": "string", "nullable": True, "title": "Notes"},
            "files": {"type": "array", "items": {"type": "string", "format": "uri"}, "title": "Files"},
            "extra": {"type": "object", "title": "Extra"},
            "flag": {"type": "boolean", "title": "Flag"},
        },
        "required": ["weights", "files", "extra", "flag"],
    }
    assert list(output["properties"]) == ["weights", "loss", "notes", "files", "extra", "flag"]  # in order


@pytest.mark.parametrize(
    "source, ref, names",
    [
        (
            "class Trainer:\n    def train(self, a: int) -> str: ...\n    def train(self, b: int) -> str: ...",
            "Trainer",
            ["a"],
        ),
        (
            "def train(self, a: int) -> str: ...\ndef other(b: int) -> str: ...",
            "missing",
            ["a"],
        ),  # falls back to `train`
        ("def fit(a: int) -> str: ...\ndef train(b: int) -> str: ...", "fit", ["a"]),
        ("class Predictor:\n    def predict(self, c: int) -> str: ...", "Predictor", None),  # no train(): refused
    ],
)
def test_train_targets_are_found_like_cog(source, ref, names):
    if names is None:
        with pytest.raises(inputs.SchemaError, match=r"Predictor\.train not found"):
            read(source, ref)
    else:
        assert [field.name for field in read(source, ref)[0]] == names


def test_missing_targets_and_outputs_are_refused():
    with pytest.raises(inputs.SchemaError, match="class or function nothing not found"):
        read("def fit(a: int) -> str: ...", "nothing")
    with pytest.raises(inputs.SchemaError, match="no return type annotation"):
        read("def train(a: int): ...")
    with pytest.raises(inputs.SchemaError, match="Optional"):
        read("from typing import Optional\ndef train(a: int) -> Optional[str]: ...")
    with pytest.raises(inputs.SchemaError, match="parametrized dict"):
        read("from cog import BaseModel\nclass O(BaseModel):\n    d: dict[str, int]\ndef train() -> O: ...")
    with pytest.raises(ValueError, match="mode"):
        read("def train() -> str: ...", mode="serve")
