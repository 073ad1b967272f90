"""The OpenAPI schema `cog build` writes to .cog/openapi_schema.json, generated from predict.py.

Cog's runtime never builds a schema: it reads `.cog/openapi_schema.json` (relative to its working
directory) and validates every request against it; without the file nothing is validated. `cog
build` writes that file by parsing predict.py statically (tree-sitter, Go). This module builds the
same document from what musicgen.dev.schema.inputs reads, so that the bytes it writes are the bytes
`cog build` would write (cog 0.23.1, pkg/schema):

- each input is a property with its `x-order`; a default of None on a non-nullable input is
  dropped and the input becomes required;
- `choices` become an enum component named after the input, referenced through `allOf`;
- `ge` / `le` / `min_length` / `max_length` / `regex` become minimum / maximum / minLength /
  maxLength / pattern;
- the JSON is compact, with Go's encoding/json conventions: object keys sorted except where cog
  keeps insertion order (properties, components, paths), integral floats without a fraction,
  `<`, `>`, `&` escaped.

Regenerate the committed file with `python -m musicgen.dev.schema.openapi` (`--check` only compares).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from decimal import Decimal
from importlib.metadata import version as package_version
from pathlib import Path

from musicgen import files
from musicgen.dev.schema.inputs import NONE, PRIMITIVES, InputField, SchemaError, read_inputs
from musicgen.weights.layout import REPOSITORY

SCHEMA_FILE = REPOSITORY / ".cog" / "openapi_schema.json"  # where coglet looks (cwd-relative)
PREDICT_REF = "predict.py:Predictor"  # as in cog.yaml `predict:`
OPENAPI_VERSION = "3.0.2"
COMMAND = "python -m musicgen.dev.schema.openapi"


class Ordered(dict):
    """A JSON object whose keys keep insertion order (cog's orderedMapAny); plain dicts are sorted."""


def _to_json(value: object) -> object:
    return None if value is NONE else value


def _input_schema(fields: list[InputField]) -> tuple[dict, list[tuple[str, dict]]]:
    """The Input component and the enum components its choices need, in input order."""
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
            prop["title"] = " ".join(part[:1].upper() + part[1:] for part in field_.name.split("_"))
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

    schema = {"title": "Input", "type": "object", "properties": properties}
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


def openapi_document(fields: list[InputField], output: dict, cog_version: str) -> dict:
    """The predict-mode OpenAPI 3.0.2 document cog builds from one predictor's inputs and output."""
    input_schema, enums = _input_schema(fields)
    components = Ordered(Input=input_schema, Output=output)
    components.update(enums)
    ref = "#/components/schemas/"
    components["PredictionRequest"] = {
        "title": "PredictionRequest",
        "type": "object",
        "properties": {"id": {"title": "Id", "type": "string"}, "input": {"$ref": ref + "Input"}},
    }
    strings = {"id": "Id", "version": "Version", "status": "Status", "error": "Error", "logs": "Logs"}
    times = {"created_at": "Created At", "started_at": "Started At", "completed_at": "Completed At"}
    components["PredictionResponse"] = {
        "title": "PredictionResponse",
        "type": "object",
        "properties": {
            "input": {"$ref": ref + "Input"},
            "output": {"$ref": ref + "Output"},
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
    paths["/predictions"] = {
        "post": {
            "summary": "Predict",
            "description": "Run a single prediction on the model",
            "operationId": "predict_predictions_post",
            "requestBody": _json_response({"$ref": ref + "PredictionRequest"}),
            "responses": {
                "200": {"description": "Successful Response", **_json_response({"$ref": ref + "PredictionResponse"})},
                "422": _validation_error(),
            },
        }
    }
    paths["/predictions/{prediction_id}/cancel"] = {
        "post": {
            "summary": "Cancel",
            "operationId": "cancel_predictions__prediction_id__cancel_post",
            "parameters": [
                {
                    "required": True,
                    "schema": {"title": "Prediction Id", "type": "string"},
                    "name": "prediction_id",
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
# Go-compatible JSON


def _go_float(value: float) -> str:
    """encoding/json's float64: shortest round-trip digits, exponent only below 1e-6 or from 1e21."""
    if not math.isfinite(value):
        raise SchemaError(f"{value} cannot be written as JSON")
    if value != 0 and (abs(value) < 1e-6 or abs(value) >= 1e21):
        text = repr(value)
        mantissa, exponent = text.split("e")
        return f"{mantissa}e{exponent[0]}{exponent[1:].lstrip('0') or '0'}"
    return format(Decimal(repr(value)).normalize(), "f")


def _go_string(text: str) -> str:
    encoded = json.dumps(text, ensure_ascii=False)
    for char, escape in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        encoded = encoded.replace(char, escape)
    return encoded


def go_json(value: object) -> str:
    """Compact JSON as Go's json.Marshal writes it (plain dicts with sorted keys)."""
    if value is None or value is NONE:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(go_json(item) for item in value) + "]"
    if isinstance(value, dict):
        keys = list(value) if isinstance(value, Ordered) else sorted(value)
        return "{" + ",".join(f"{_go_string(str(key))}:{go_json(value[key])}" for key in keys) + "}"
    raise SchemaError(f"cannot write {type(value).__name__} as JSON")


# ---------------------------------------------------------------------------------------------
# Entry points


def cog_version() -> str:
    """The pinned cog release: `cog build` writes its own version into info.version."""
    return package_version("cog")


def generate(predict_ref: str = PREDICT_REF, root: Path = REPOSITORY) -> str:
    """The schema JSON for `predict_ref` ("file.py:Class", relative to root), as cog build writes it."""
    file_name, _, class_name = predict_ref.partition(":")
    if not file_name.endswith(".py") or not class_name:
        raise SchemaError(f"predict ref {predict_ref!r} must look like 'predict.py:Predictor'")
    fields, output = read_inputs((root / file_name).read_text(), class_name)
    return go_json(openapi_document(fields, output, cog_version()))


def write(path: Path = SCHEMA_FILE, predict_ref: str = PREDICT_REF, root: Path = REPOSITORY) -> Path:
    """(Re)write the schema file; untouched when already up to date."""
    text = generate(predict_ref, root)
    if not path.is_file() or path.read_text() != text:
        files.write_text(path, text)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the file is stale")
    args = parser.parse_args(argv)
    if args.check:
        if SCHEMA_FILE.is_file() and SCHEMA_FILE.read_text() == generate():
            return 0
        print(f"{SCHEMA_FILE} is stale: run `{COMMAND}`", file=sys.stderr)
        return 1
    print(f"schema written to {write()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
