"""predict.py's inputs as `cog build` reads them: statically, with `ast`, without importing the file.

The rules are cog's (0.23.1, pkg/schema, which parses with tree-sitter):

- inputs are the parameters of `run()` (else `predict()`) of the named class, in declaration
  order; `Input(...)` keywords must be literals or module-level literal constants of predict.py;
  string literals are taken as written, escapes uninterpreted;
- `Optional[X]` / `X | None` makes an input nullable;
- `choices` may be a list literal, a module constant, `list(D.keys())` / `list(D.values())` or a sum
  of those; `ge` / `le` / `min_length` / `max_length` are read from numeric literals only.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

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
    raise SchemaError(f"parameter '{name}': type `{ast.unparse(node)}` is not supported by musicgen.dev.schema")


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
