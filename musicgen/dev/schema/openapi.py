"""The OpenAPI schema `cog build` writes to .cog/openapi_schema.json, generated from predict.py.

Cog's runtime never builds a schema: it reads `.cog/openapi_schema.json` (relative to its working
directory) and validates every request against it; without the file nothing is validated. `cog
build` writes that file by parsing predict.py statically (tree-sitter, Go). This module follows the
same rules with Python's `ast`, without importing predict.py, so that the bytes it writes are the
bytes `cog build` would write (cog 0.23.1, pkg/schema):

- inputs are the parameters of `run()` (else `predict()`) of the class named in the predict ref,
  in declaration order (`x-order`); `Input(...)` keywords must be literals or module-level
  literal constants of predict.py; string literals are taken as written, escapes uninterpreted;
- `Optional[X]` / `X | None` makes an input nullable; a default of None on a non-nullable input is
  dropped and the input becomes required;
- `choices` become an enum component named after the input, referenced through `allOf`;
- `ge` / `le` / `min_length` / `max_length` / `regex` become minimum / maximum / minLength /
  maxLength / pattern;
- the JSON is compact, with Go's encoding/json conventions: object keys sorted except where cog
  keeps insertion order (properties, components, paths), integral floats without a fraction,
  `<`, `>`, `&` escaped.

Regenerate the committed file with `python -m musicgen.schema` (`--check` only compares).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
from dataclasses import dataclass, field
from decimal import Decimal
from importlib.metadata import version as package_version
from pathlib import Path

from musicgen.weights import REPOSITORY

SCHEMA_FILE = REPOSITORY / ".cog" / "openapi_schema.json"  # where coglet looks (cwd-relative)
PREDICT_REF = "predict.py:Predictor"  # as in cog.yaml `predict:`
OPENAPI_VERSION = "3.0.2"

# Python type name -> JSON schema fragment (cog's PrimitiveType.JSONType()).
PRIMITIVES = {
    "bool": {"type": "boolean"},
    "float": {"type": "number"},
    "int": {"type": "integer"},
    "str": {"type": "string"},
    "Path": {"type": "string", "format": "uri"},
    "File": {"type": "string", "format": "uri"},
    "Secret": {"type": "string", "format": "password", "writeOnly": True, "x-cog-secret": True},
    "Any": {"type": "object"},
}
NONE = object()  # a literal None default, kept apart from "no default"


class SchemaError(ValueError):
    """predict.py declares something static schema generation cannot express."""


class Ordered(dict):
    """A JSON object whose keys keep insertion order (cog's orderedMapAny); plain dicts are sorted."""


@dataclass
class InputType:
    """One input's type: a primitive name, optionally a list of it, optionally nullable."""

    primitive: str
    is_list: bool = False
    nullable: bool = False

    def json(self) -> dict:
        schema = dict(PRIMITIVES[self.primitive])
        if self.is_list:
            schema = {"type": "array", "items": schema}
        if self.nullable:
            schema["nullable"] = True
        return schema


@dataclass
class InputField:
    """One predict() parameter as cog's static parser sees it."""

    name: str
    order: int
    type: InputType
    default: object = None  # None: no default; NONE: default=None; else the literal value
    has_default: bool = False
    keywords: dict = field(default_factory=dict)  # description, ge, le, choices, ...


# ---------------------------------------------------------------------------------------------
# Reading predict.py


def _raw_string(node: ast.AST, source: str) -> str | None:
    """A string literal as cog reads it: the source text minus its quotes, escapes untouched."""
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        return None
    text = ast.get_source_segment(source, node) or ""
    for quote in ('"""', "'''"):
        if text.startswith(quote):
            return text[3:-3] if len(text) >= 6 else None
    if text[:1] in ('"', "'"):
        return text[1:-1]
    if text[:2] in ('r"', "r'"):
        return text[2:-1]
    return None  # f-, b-, u- and R- prefixed strings are not read by cog


def _literal(node: ast.AST, source: str, scope: dict | None = None) -> object:
    """A literal default (None -> NONE); names resolve through `scope` one level deep.

    Raises SchemaError when the expression is not a literal cog can read.
    """
    if isinstance(node, ast.Constant):
        if node.value is None:
            return NONE
        if isinstance(node.value, str):
            text = _raw_string(node, source)
            if text is None:
                raise SchemaError(f"string {ast.get_source_segment(source, node)} cannot be read statically")
            return text
        if isinstance(node.value, (bool, int, float)):
            return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand, source)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [_literal(item, source) for item in node.elts]
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_literal(k, source): _literal(v, source) for k, v in zip(node.keys, node.values, strict=True)}
    if scope is not None and isinstance(node, ast.Name) and node.id in scope:
        return scope[node.id]
    raise SchemaError(f"`{ast.get_source_segment(source, node)}` cannot be statically resolved")


def _module_scope(tree: ast.Module, source: str) -> dict:
    """Module-level `NAME = <literal>` assignments: the constants Input(...) may refer to."""
    scope = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target, value = statement.targets[0], statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            target, value = statement.target, statement.value
        else:
            continue
        if isinstance(target, ast.Name):
            try:
                scope[target.id] = _literal(value, source)
            except SchemaError:
                pass
    return scope


def _imports(tree: ast.Module) -> dict[str, tuple[str, str]]:
    """Local name -> (module, original name) for every top-level import."""
    names = {}
    for statement in tree.body:
        if isinstance(statement, ast.ImportFrom) and statement.module:
            for alias in statement.names:
                names[alias.asname or alias.name] = (statement.module, alias.name)
        elif isinstance(statement, ast.Import):
            for alias in statement.names:
                names[alias.asname or alias.name] = (alias.name, alias.name)
    return names


def _is_input_call(node: ast.AST, imports: dict) -> bool:
    if not isinstance(node, ast.Call):
        return False
    name = ast.unparse(node.func)
    return name == "Input" or imports.get(name) == ("cog", "Input")


def _choices(node: ast.AST, source: str, scope: dict, name: str) -> list:
    """choices=: a list literal, a module constant, list(D.keys()/values()), or a + b."""
    if isinstance(node, ast.List):
        return _literal(node, source)
    if isinstance(node, ast.Name) and isinstance(scope.get(node.id), list):
        return scope[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _choices(node.left, source, scope, name) + _choices(node.right, source, scope, name)
    if (
        isinstance(node, ast.Call)
        and ast.unparse(node.func) == "list"
        and len(node.args) == 1
        and isinstance(inner := node.args[0], ast.Call)
        and isinstance(inner.func, ast.Attribute)
        and isinstance(inner.func.value, ast.Name)
        and inner.func.attr in ("keys", "values")
        and isinstance(mapping := scope.get(inner.func.value.id), dict)
    ):
        return list(mapping.keys() if inner.func.attr == "keys" else mapping.values())
    raise SchemaError(f"parameter '{name}': choices expression cannot be statically resolved")


def _number(node: ast.AST, source: str) -> float | None:
    """ge= / le= / min_length= / max_length=: numeric literals only (no constants), as in cog."""
    try:
        value = _literal(node, source)
    except SchemaError:
        return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _input_keywords(call: ast.Call, source: str, scope: dict, name: str) -> tuple[dict, object, bool]:
    """The keywords of one Input(...) call: (metadata, default, has_default)."""
    keywords, default, has_default = {}, None, False
    for keyword in call.keywords:
        key, value = keyword.arg, keyword.value
        if key == "default":
            try:
                default = _literal(value, source, scope)
            except SchemaError:
                default = NONE  # cog treats an unresolvable Input default as None
            has_default = True
        elif key == "default_factory":
            raise SchemaError(f"parameter '{name}': default_factory is not supported in static schema generation")
        elif key == "description":
            text = _raw_string(value, source)
            if text is None and isinstance(value, ast.Name) and isinstance(scope.get(value.id), str):
                text = scope[value.id]
            if text is not None:
                keywords["description"] = text
        elif key in ("ge", "le", "min_length", "max_length"):
            number = _number(value, source)
            if number is not None:
                keywords[key] = number if key in ("ge", "le") else int(number)
        elif key in ("regex", "accept"):
            text = _raw_string(value, source)
            if text is not None:
                keywords[key] = text
        elif key == "choices":
            keywords["choices"] = _choices(value, source, scope, name)
        elif key == "deprecated" and isinstance(value, ast.Constant) and isinstance(value.value, bool):
            keywords["deprecated"] = value.value
    return keywords, default, has_default


def _strip_typing(name: str) -> str:
    """`typing.Optional` / `t.Optional` / `cog.Path` -> the bare name, as cog resolves them."""
    return name.rsplit(".", 1)[-1]


def _input_type(node: ast.AST, imports: dict, name: str) -> InputType:
    """A parameter annotation -> InputType, for the types this predictor can declare."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # "forward reference"
        node = ast.parse(node.value, mode="eval").body
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):  # X | None
        members = [node.left, node.right]
        if sum(isinstance(m, ast.Constant) and m.value is None for m in members) == 1:
            inner = _input_type(
                next(m for m in members if not (isinstance(m, ast.Constant) and m.value is None)), imports, name
            )
            inner.nullable = True
            return inner
    if isinstance(node, ast.Subscript):
        outer = _strip_typing(ast.unparse(node.value))
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if outer == "Optional" and len(args) == 1:
            inner = _input_type(args[0], imports, name)
            inner.nullable = True
            return inner
        if outer == "Union" and len(args) == 2 and any(isinstance(a, ast.Constant) and a.value is None for a in args):
            inner = _input_type(
                next(a for a in args if not (isinstance(a, ast.Constant) and a.value is None)), imports, name
            )
            inner.nullable = True
            return inner
        if outer in ("List", "list") and len(args) == 1:
            inner = _input_type(args[0], imports, name)
            if inner.is_list or inner.nullable:
                raise SchemaError(f"parameter '{name}': nested generics like List[Optional[X]] are not supported")
            inner.is_list = True
            return inner
        if outer in ("Dict", "dict"):
            return InputType("Any")
    if isinstance(node, (ast.Name, ast.Attribute)):
        type_name = _strip_typing(ast.unparse(node))
        if type_name in ("dict", "Dict"):
            return InputType("Any")
        if type_name in PRIMITIVES:
            return InputType(type_name)
    raise SchemaError(f"parameter '{name}': type `{ast.unparse(node)}` is not supported by musicgen.schema")


def _output_schema(node: ast.AST | None, imports: dict, method: str) -> dict:
    """The return annotation -> the Output component (cog rejects a missing or Optional one)."""
    if node is None:
        raise SchemaError(f"{method}() has no return type annotation")
    output = _input_type(node, imports, "return")
    if output.nullable:
        raise SchemaError(f"{method}() must not return Optional[...]")
    schema = output.json()
    schema["title"] = "Output"
    return schema


def _target_method(tree: ast.Module, class_name: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    """The class's run() (preferred, as in cog 0.23) or predict() method."""
    for statement in tree.body:
        if isinstance(statement, ast.ClassDef) and statement.name == class_name:
            methods = {
                item.name: item for item in statement.body if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
            }
            if "run" in methods or "predict" in methods:
                return methods.get("run") or methods["predict"]
            raise SchemaError(f"{class_name} must define run() or predict()")
    raise SchemaError(f"class {class_name} not found")


def read_inputs(source: str, class_name: str = "Predictor") -> tuple[list[InputField], dict]:
    """Every input of the predictor class in `source`, and the Output schema."""
    tree = ast.parse(source)
    imports, scope = _imports(tree), _module_scope(tree, source)
    method = _target_method(tree, class_name)
    arguments = method.args
    if arguments.vararg or arguments.kwarg or arguments.posonlyargs:
        raise SchemaError(f"{method.name}() may only take named parameters")
    parameters = arguments.args + arguments.kwonlyargs
    defaults = [None] * (len(arguments.args) - len(arguments.defaults)) + arguments.defaults + arguments.kw_defaults
    if parameters and parameters[0].arg == "self":
        parameters, defaults = parameters[1:], defaults[1:]

    fields = []
    for order, (parameter, default_node) in enumerate(zip(parameters, defaults, strict=True)):
        name = parameter.arg
        if parameter.annotation is None:
            raise SchemaError(f"parameter '{name}' on {method.name} has no type annotation")
        field_ = InputField(name, order, _input_type(parameter.annotation, imports, name))
        if default_node is not None:
            if _is_input_call(default_node, imports):
                field_.keywords, field_.default, field_.has_default = _input_keywords(default_node, source, scope, name)
            else:
                field_.default, field_.has_default = _literal(default_node, source, scope), True
        if "accept" in field_.keywords and field_.type.primitive not in ("Path", "File"):
            raise SchemaError(f"accept is only valid on Path or File inputs (parameter '{name}')")
        fields.append(field_)
    return fields, _output_schema(method.returns, imports, method.name)


# ---------------------------------------------------------------------------------------------
# Building the OpenAPI document


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
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        partial.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m musicgen.schema", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the file is stale")
    args = parser.parse_args(argv)
    if args.check:
        if SCHEMA_FILE.is_file() and SCHEMA_FILE.read_text() == generate():
            return 0
        print(f"{SCHEMA_FILE} is stale: run `python -m musicgen.schema`", file=sys.stderr)
        return 1
    print(f"schema written to {write()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
