"""Python source values as cog's static parser reads them (cog 0.23.1, pkg/schema/python: literals.go,
module_scope.go, imports.go): literals taken as written, module-level literal constants, imports.
"""

from __future__ import annotations

import ast

NONE = object()  # a literal None default, kept apart from "no default"


class SchemaError(ValueError):
    """The source declares something static schema generation cannot express."""


def raw_string(node: ast.AST, source: str) -> str | None:
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


def literal(node: ast.AST, source: str, scope: dict | None = None) -> object:
    """A literal default (None -> NONE); names resolve through `scope` one level deep.

    Raises SchemaError when the expression is not a literal cog can read.
    """
    if isinstance(node, ast.Constant):
        if node.value is None:
            return NONE
        if isinstance(node.value, str):
            text = raw_string(node, source)
            if text is None:
                raise SchemaError(f"string {ast.get_source_segment(source, node)} cannot be read statically")
            return text
        if isinstance(node.value, (bool, int, float)):
            return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = literal(node.operand, source)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [literal(item, source) for item in node.elts]
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {literal(k, source): literal(v, source) for k, v in zip(node.keys, node.values, strict=True)}
    if scope is not None and isinstance(node, ast.Name) and node.id in scope:
        return scope[node.id]
    raise SchemaError(f"`{ast.get_source_segment(source, node)}` cannot be statically resolved")


def module_scope(tree: ast.Module, source: str) -> dict:
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
                scope[target.id] = literal(value, source)
            except SchemaError:
                pass
    return scope


def imports_of(tree: ast.Module) -> dict[str, tuple[str, str]]:
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
