"""The inputs and output of predict.py / train.py as `cog build` reads them: statically, with `ast`,
without importing the file.

The rules are cog's (0.23.1, pkg/schema, which parses with tree-sitter):

- the target is the class a cog.yaml ref names (predict: its `run()`, else `predict()`; train: its
  `train()`), else a module-level function of that name, else one named `predict` / `train`;
- inputs are its parameters (less a first `self`) in declaration order; `Input(...)` keywords must
  be literals or module-level literal constants of that file; string literals are taken as
  written, escapes uninterpreted;
- `Optional[X]` / `X | None` makes an input nullable;
- `choices` may be a list literal, a module constant, `list(D.keys())` / `list(D.values())` or a sum
  of those; `ge` / `le` / `min_length` / `max_length` are read from numeric literals only;
- the output is a primitive, a list of one, an `Iterator[X]` / `AsyncIterator[X]` of one (an
  array marked `x-cog-array-type: iterator`), or a BaseModel subclass of the same file (an object
  whose annotated fields are its properties), titled "Output" in both modes;
- a predict target decorated `@streaming` / `@cog.streaming` (imported from cog) supports
  server-sent events (it must return an iterator).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from tooling.schema.gojson import Ordered
from tooling.schema.literals import NONE, SchemaError, imports_of, literal, module_scope, raw_string

PREDICT, TRAIN = "predict", "train"  # cog's schema.Mode
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


def _is_input_call(node: ast.AST, imports: dict) -> bool:
    if not isinstance(node, ast.Call):
        return False
    name = ast.unparse(node.func)
    return name == "Input" or imports.get(name) == ("cog", "Input")


def _choices(node: ast.AST, source: str, scope: dict, name: str) -> list:
    """choices=: a list literal, a module constant, list(D.keys()/values()), or a + b."""
    if isinstance(node, ast.List):
        return literal(node, source)
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
        value = literal(node, source)
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
                default = literal(value, source, scope)
            except SchemaError:
                default = NONE  # cog treats an unresolvable Input default as None
            has_default = True
        elif key == "default_factory":
            raise SchemaError(f"parameter '{name}': default_factory is not supported in static schema generation")
        elif key == "description":
            text = raw_string(value, source)
            if text is None and isinstance(value, ast.Name) and isinstance(scope.get(value.id), str):
                text = scope[value.id]
            if text is not None:
                keywords["description"] = text
        elif key in ("ge", "le", "min_length", "max_length"):
            number = _number(value, source)
            if number is not None:
                keywords[key] = number if key in ("ge", "le") else int(number)
        elif key in ("regex", "accept"):
            text = raw_string(value, source)
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
    raise SchemaError(f"parameter '{name}': type `{ast.unparse(node)}` is not supported by tooling.schema")


def title_case(name: str) -> str:
    """cog's TitleCase: "training_id" -> "Training Id"."""
    return " ".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _value_type(node: ast.AST, imports: dict, name: str) -> InputType:
    """An output or output-field annotation: what an input may be, less dict[K, V] (cog would write
    additionalProperties, which this generator does not)."""
    if isinstance(node, ast.Subscript) and _strip_typing(ast.unparse(node.value)) in ("Dict", "dict"):
        raise SchemaError(f"{name}: a parametrized dict output is not supported by tooling.schema")
    return _input_type(node, imports, name)


def _is_base_model(node: ast.AST, imports: dict) -> bool:
    """cog's InheritsFromBaseModel: `BaseModel`, a name imported as cog's / pydantic's, or `x.BaseModel`."""
    if isinstance(node, ast.Name):
        module, original = imports.get(node.id, ("", ""))
        return node.id == "BaseModel" or (module in ("cog", "pydantic", "pydantic.v1") and original == "BaseModel")
    return isinstance(node, ast.Attribute) and node.attr == "BaseModel"


def _model_schema(model: ast.ClassDef, source: str, imports: dict) -> dict:
    """A BaseModel subclass as cog's object schema: its annotated fields in order, each titled; `required`
    lists those neither Optional nor given a default cog can read (defaults themselves are not written)."""
    properties, required = Ordered(), []
    for statement in model.body:
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
            continue
        name = statement.target.id
        field_type = _value_type(statement.annotation, imports, f"{model.name}.{name}")
        has_default = False
        if statement.value is not None:
            try:
                literal(statement.value, source)
                has_default = True
            except SchemaError:
                pass  # cog's parseDefaultValue fails too: the field stays required
        if not (field_type.nullable or has_default):
            required.append(name)
        properties[name] = {**field_type.json(), "title": title_case(name)}
    schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


ITERATORS = ("Iterator", "AsyncIterator")  # cog's iterator outputs (typing's or collections.abc's names)


def _iterator_of(node: ast.AST) -> ast.AST | None:
    """The element annotation of `Iterator[X]` / `AsyncIterator[X]`, else None."""
    if isinstance(node, ast.Subscript) and _strip_typing(ast.unparse(node.value)).split(".")[-1] in ITERATORS:
        return node.slice
    return None


def is_streaming(function: ast.FunctionDef | ast.AsyncFunctionDef, tree: ast.Module) -> bool:
    """cog's functionSupportsStreaming: decorated `@streaming` or `@cog.streaming` (called or not),
    the name imported from cog."""
    imports = imports_of(tree)
    for decorator in function.decorator_list:
        node = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(node, ast.Name) and imports.get(node.id) == ("cog", "streaming"):
            return True
        if isinstance(node, ast.Attribute) and node.attr == "streaming" and isinstance(node.value, ast.Name):
            if imports.get(node.value.id) == ("cog", "cog"):
                return True
    return False


def _output_schema(function: ast.FunctionDef | ast.AsyncFunctionDef, tree: ast.Module, source: str) -> dict:
    """The return annotation -> the output component, titled "Output" in both modes (cog rejects a
    missing or Optional one). A BaseModel subclass of the same file becomes an object."""
    node, imports = function.returns, imports_of(tree)
    if node is None:
        raise SchemaError(f"{function.name}() has no return type annotation")
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # "forward reference"
        node = ast.parse(node.value, mode="eval").body
    models = {  # by name; a later class of the same name replaces an earlier one, as in cog
        statement.name: statement
        for statement in tree.body
        if isinstance(statement, ast.ClassDef) and any(_is_base_model(base, imports) for base in statement.bases)
    }
    if isinstance(node, ast.Name) and node.id in models:
        return {**_model_schema(models[node.id], source, imports), "title": "Output"}
    element = _iterator_of(node)
    if element is not None:
        items = _value_type(element, imports, "return")
        return {"type": "array", "items": items.json(), "x-cog-array-type": "iterator", "title": "Output"}
    if is_streaming(function, tree):
        raise SchemaError("@streaming requires Iterator[...] or AsyncIterator[...] return type")
    output = _value_type(node, imports, "return")
    if output.nullable:
        raise SchemaError(f"{function.name}() must not return Optional[...]")
    return {**output.json(), "title": "Output"}


def _target(tree: ast.Module, name: str, mode: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    """cog's findTargetCallableNode: a class `name` (predict: its run(), else predict(); train: its
    train()); else a module-level function `name`, else one named after the mode."""
    for statement in tree.body:
        if isinstance(statement, ast.ClassDef) and statement.name == name:
            methods = [item for item in statement.body if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))]
            if mode == TRAIN:  # the first train(), as cog's findNamedMethodInClass
                found = next((method for method in methods if method.name == TRAIN), None)
            else:  # cog's collectPredictMethods keeps the last of each name, and run() wins
                last = {method.name: method for method in methods}
                found = last.get("run") or last.get("predict")
            if found is None:
                raise SchemaError(
                    f"{name}.train not found" if mode == TRAIN else f"{name} must define run() or predict()"
                )
            return found
    functions = [s for s in tree.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for wanted in (name, mode):
        for function in functions:
            if function.name == wanted:
                return function
    raise SchemaError(f"class or function {name} not found")


def read_inputs(source: str, target: str = "Predictor", mode: str = PREDICT) -> tuple[list[InputField], dict]:
    """Every input of the predict (or train) target named `target` in `source`, and its output schema."""
    fields, output, _ = read_target(source, target, mode)
    return fields, output


def read_target(source: str, target: str = "Predictor", mode: str = PREDICT) -> tuple[list[InputField], dict, bool]:
    """read_inputs(), and whether the target supports streaming (a predict target's @streaming)."""
    if mode not in (PREDICT, TRAIN):
        raise ValueError(f"mode must be {PREDICT!r} or {TRAIN!r}, got {mode!r}")
    tree = ast.parse(source)
    imports, scope = imports_of(tree), module_scope(tree, source)
    method = _target(tree, target, mode)
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
                field_.default, field_.has_default = literal(default_node, source, scope), True
        if "accept" in field_.keywords and field_.type.primitive not in ("Path", "File"):
            raise SchemaError(f"accept is only valid on Path or File inputs (parameter '{name}')")
        fields.append(field_)
    return fields, _output_schema(method, tree, source), mode == PREDICT and is_streaming(method, tree)
