"""The OpenAPI schema `cog build` writes to .cog/openapi_schema.json, generated from cog.yaml's targets.

Cog's runtime never builds a schema: it reads `.cog/openapi_schema.json` (relative to its working
directory) and validates every request against it (`Input`; `TrainingInput` in train mode); without
the file nothing is validated. `cog build` writes that file by parsing predict.py and train.py
statically (tree-sitter, Go). This module builds the same document from what
tooling.schema.inputs reads, so that the bytes it writes are the bytes `cog build` would
write (cog 0.23.1, pkg/schema):

- each input is a property with its `x-order`; a default of None on a non-nullable input is
  dropped and the input becomes required;
- `choices` become an enum component named after the input, referenced through `allOf`;
- `ge` / `le` / `min_length` / `max_length` / `regex` become minimum / maximum / minLength /
  maxLength / pattern;
- predict mode names its parts Input, Output, PredictionRequest, ... and /predictions; train mode
  TrainingInput, TrainingOutput, TrainingRequest, ... and /trainings;
- with one target (cog.yaml has `predict:` only) the JSON is compact, as Go's json.Marshal writes it:
  keys sorted except where cog keeps insertion order (properties, components, paths);
- with `predict:` and `train:`, cog merges the two documents (predict's wins on a name both have;
  train adds its paths and the components predict lacks) and writes the merge with
  json.MarshalIndent: every key sorted, 2-space indent (tooling.schema.gojson).

- a predict target decorated `@streaming` gets `"x-cog-streaming": true` in its operation (the
  runtime then answers `Accept: text/event-stream` with server-sent events).

Two models are committed: the published one (cog.yaml -> .cog/openapi_schema.json) and the
streaming one (streaming/cog.yaml -> streaming/.cog/openapi_schema.json, which `serve --stream`
serves from that folder). Regenerate both with `python -m tooling.schema.openapi` (`--check` only
compares).
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import version as package_version
from pathlib import Path

from musicgen import atomic_files
from musicgen.serving.cog_yaml import STREAMING_DIR, CogRefs, cog_refs, split_ref
from musicgen.settings import REPOSITORY
from tooling.schema.gojson import Ordered, go_json, go_json_indent
from tooling.schema.inputs import NONE, PREDICT, PRIMITIVES, TRAIN, InputField, read_target, title_case

SCHEMA_FILE = REPOSITORY / ".cog" / "openapi_schema.json"  # where coglet looks (cwd-relative)
# (cog.yaml, the schema file written for it): the published model, then the streaming one
MODELS = (
    (REPOSITORY / "cog.yaml", SCHEMA_FILE),
    (STREAMING_DIR / "cog.yaml", STREAMING_DIR / ".cog" / "openapi_schema.json"),
)
OPENAPI_VERSION = "3.0.2"
COMMAND = "python -m tooling.schema.openapi"
# What each mode calls its parts (cog's buildOpenAPISpec, pkg/schema/openapi_spec.go).
NAMES = {
    PREDICT: {
        "input": "Input",
        "output": "Output",
        "request": "PredictionRequest",
        "response": "PredictionResponse",
        "endpoint": "/predictions",
        "summary": "Predict",
        "description": "Run a single prediction on the model",
        "operation": "predict_predictions_post",
        "cancel_operation": "cancel_predictions__prediction_id__cancel_post",
        "id": "prediction_id",
    },
    TRAIN: {
        "input": "TrainingInput",
        "output": "TrainingOutput",
        "request": "TrainingRequest",
        "response": "TrainingResponse",
        "endpoint": "/trainings",
        "summary": "Train",
        "description": "Run a single training on the model",
        "operation": "train_trainings_post",
        "cancel_operation": "cancel_trainings__training_id__cancel_post",
        "id": "training_id",
    },
}


def _to_json(value: object) -> object:
    """A value read from the source, with every literal None (NONE) as JSON null."""
    if isinstance(value, list):
        return [_to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: _to_json(item) for key, item in value.items()}
    return None if value is NONE else value


def _input_schema(fields: list[InputField], title: str) -> tuple[dict, list[tuple[str, dict]]]:
    """The Input (TrainingInput) component and the enum components its choices need, in input order."""
    properties, required, enums = Ordered(), [], []
    for field_ in fields:
        prop = {"x-order": field_.order}
        choices = field_.keywords.get("choices")
        if choices:
            enum_type = PRIMITIVES[field_.type.primitive]["type"]  # a list's enum is of its items
            enums.append(
                (
                    field_.name,
                    {
                        "title": field_.name,
                        "description": "An enumeration.",
                        "enum": [_to_json(c) for c in choices],
                        "type": enum_type,
                    },
                )
            )
            prop["allOf"] = [{"$ref": f"#/components/schemas/{field_.name}"}]
        else:
            prop["title"] = title_case(field_.name)
            prop.update(field_.type.json())

        nullable = field_.type.nullable or (
            field_.type.primitive == "Secret" and not field_.type.is_list and field_.default is NONE
        )
        has_default = field_.has_default and not (field_.default is NONE and not nullable)
        if not has_default and not field_.type.nullable:
            required.append(field_.name)
        if has_default:
            prop["default"] = _to_json(field_.default)
        if nullable:
            prop["nullable"] = True
        for key, json_key in (
            ("description", "description"),
            ("ge", "minimum"),
            ("le", "maximum"),
            ("min_length", "minLength"),
            ("max_length", "maxLength"),
            ("regex", "pattern"),
            ("accept", "x-cog-accept"),
        ):
            if key in field_.keywords:
                prop[json_key] = field_.keywords[key]
        if field_.keywords.get("deprecated"):
            prop["deprecated"] = True
        properties[field_.name] = prop

    schema = {"title": title, "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema, enums


def _json_response(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def _validation_error() -> dict:
    return {"description": "Validation Error", **_json_response({"$ref": "#/components/schemas/HTTPValidationError"})}


def _plain_get(summary: str, operation_id: str) -> dict:
    return {
        "get": {
            "summary": summary,
            "operationId": operation_id,
            "responses": {"200": {"description": "Successful Response", **_json_response({})}},
        }
    }


def openapi_document(
    fields: list[InputField], output: dict, cog_version: str, mode: str = PREDICT, streaming: bool = False
) -> dict:
    """The OpenAPI 3.0.2 document cog builds from one target's inputs and output (buildOpenAPISpec);
    `streaming`: the predict target is decorated @streaming."""
    names = NAMES[mode]
    input_schema, enums = _input_schema(fields, names["input"])
    components = Ordered({names["input"]: input_schema, names["output"]: output})
    components.update(enums)
    ref = "#/components/schemas/"
    components[names["request"]] = {
        "title": names["request"],
        "type": "object",
        "properties": {"id": {"title": "Id", "type": "string"}, "input": {"$ref": ref + names["input"]}},
    }
    strings = {"id": "Id", "version": "Version", "status": "Status", "error": "Error", "logs": "Logs"}
    times = {"created_at": "Created At", "started_at": "Started At", "completed_at": "Completed At"}
    components[names["response"]] = {
        "title": names["response"],
        "type": "object",
        "properties": {
            "input": {"$ref": ref + names["input"]},
            "output": {"$ref": ref + names["output"]},
            **{key: {"title": title, "type": "string"} for key, title in strings.items()},
            **{key: {"title": title, "type": "string", "format": "date-time"} for key, title in times.items()},
            "metrics": {"title": "Metrics", "type": "object"},
        },
    }
    components["Status"] = {
        "title": "Status",
        "description": "An enumeration.",
        "type": "string",
        "enum": ["starting", "processing", "succeeded", "canceled", "failed"],
    }
    components["HTTPValidationError"] = {
        "title": "HTTPValidationError",
        "type": "object",
        "properties": {"detail": {"title": "Detail", "type": "array", "items": {"$ref": ref + "ValidationError"}}},
    }
    components["ValidationError"] = {
        "title": "ValidationError",
        "required": ["loc", "msg", "type"],
        "type": "object",
        "properties": {
            "loc": {
                "title": "Location",
                "type": "array",
                "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            },
            "msg": {"title": "Message", "type": "string"},
            "type": {"title": "Error Type", "type": "string"},
        },
    }

    paths = Ordered()
    paths["/"] = _plain_get("Root", "root__get")
    paths["/health-check"] = _plain_get("Healthcheck", "healthcheck_health_check_get")
    paths[names["endpoint"]] = {
        "post": {
            "summary": names["summary"],
            "description": names["description"],
            "operationId": names["operation"],
            "requestBody": _json_response({"$ref": ref + names["request"]}),
            "responses": {
                "200": {"description": "Successful Response", **_json_response({"$ref": ref + names["response"]})},
                "422": _validation_error(),
            },
            **({"x-cog-streaming": True} if streaming and mode == PREDICT else {}),
        }
    }
    paths[f"{names['endpoint']}/{{{names['id']}}}/cancel"] = {
        "post": {
            "summary": "Cancel",
            "operationId": names["cancel_operation"],
            "parameters": [
                {
                    "required": True,
                    "schema": {"title": title_case(names["id"]), "type": "string"},
                    "name": names["id"],
                    "in": "path",
                }
            ],
            "responses": {
                "200": {"description": "Successful Response", **_json_response({})},
                "422": _validation_error(),
            },
        }
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Cog", "version": cog_version},
        "paths": paths,
        "components": {"schemas": components},
    }


# ---------------------------------------------------------------------------------------------
# Entry points


def cog_version() -> str:
    """The pinned cog release: `cog build` writes its own version into info.version."""
    return package_version("cog")


def merge(predict: dict, train: dict) -> dict:
    """cog's MergeSchemas: `predict` (changed in place) plus the paths and component schemas of
    `train` whose names it lacks; everything else (openapi, info, clashing names) is predict's."""
    for key, value in train["paths"].items():
        predict["paths"].setdefault(key, value)
    for key, value in train["components"]["schemas"].items():
        predict["components"]["schemas"].setdefault(key, value)
    return predict


def target_document(ref: str, mode: str, root: Path = REPOSITORY) -> str:
    """The compact document `cog build` generates for one target ("file.py:Name", relative to root)."""
    file_name, name = split_ref(ref)
    fields, output, streaming = read_target((root / file_name).read_text(), name, mode)
    return go_json(openapi_document(fields, output, cog_version(), mode, streaming))


def generate(refs: CogRefs | None = None, root: Path = REPOSITORY) -> str:
    """The schema JSON for `refs` (default: root/cog.yaml's; refs are relative to `root`, cog's
    project folder), as cog build writes it (GenerateCombined).

    One target: its compact document. Both: each document is generated, decoded as json.Unmarshal
    decodes into map[string]any (every number a float64: "-0" stays -0), merged and written again
    with json.MarshalIndent.
    """
    refs = refs or cog_refs(root / "cog.yaml")
    if refs.train is None or refs.predict is None:
        return target_document(refs.predict or refs.train, PREDICT if refs.predict else TRAIN, root)
    both = ((refs.predict, PREDICT), (refs.train, TRAIN))
    predict, train = (json.loads(target_document(ref, mode, root), parse_int=float) for ref, mode in both)
    return go_json_indent(merge(predict, train))


def write(path: Path = SCHEMA_FILE, refs: CogRefs | None = None, root: Path = REPOSITORY) -> Path:
    """(Re)write the schema file; untouched when already up to date."""
    text = generate(refs, root)
    if not path.is_file() or path.read_text() != text:
        atomic_files.write_text(path, text)
    return path


def stale() -> list[Path]:
    """The committed schema files that differ from what their cog.yaml's targets give."""
    return [path for config, path in MODELS if not path.is_file() or path.read_text() != generate(cog_refs(config))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file is stale")
    args = parser.parse_args(argv)
    if args.check:
        for path in stale():
            print(f"{path} is stale: run `{COMMAND}`", file=sys.stderr)
        return 1 if stale() else 0
    for config, path in MODELS:
        print(f"schema written to {write(path, cog_refs(config))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
