"""JSON text byte for byte as cog's Go code writes it: `json.Marshal` (compact) and `json.MarshalIndent`.

Go's encoding/json (cog 0.23.1 is built with Go 1.26):

- object keys sorted bytewise, except in cog's own ordered maps (`Ordered` here);
- numbers as float64: shortest round-trip digits, an exponent only below 1e-6 or from 1e21
  (`1e-7`, `1e+21`), integral values without a fraction;
- strings with `<`, `>`, `&`, U+2028 and U+2029 escaped as `\\u003c` ..., other characters as
  written (UTF-8), control characters as `\\n`, `\\t`, `\\b`, `\\f`, `\\r` or `\\u00XX`;
- MarshalIndent("", "  "): one member per line, 2 spaces a level, `": "` after keys, `{}` and `[]`
  for empty containers, no trailing newline.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal

INDENT = "  "  # json.MarshalIndent(merged, "", "  ") in cog's GenerateCombined


class Ordered(dict):
    """A JSON object whose keys keep insertion order (cog's orderedMapAny); plain dicts are sorted."""


def go_float(value: float) -> str:
    """encoding/json's float64: shortest round-trip digits, exponent only below 1e-6 or from 1e21."""
    if not math.isfinite(value):
        raise ValueError(f"{value} cannot be written as JSON")
    if value != 0 and (abs(value) < 1e-6 or abs(value) >= 1e21):
        text = repr(value)
        mantissa, exponent = text.split("e")
        return f"{mantissa}e{exponent[0]}{exponent[1:].lstrip('0') or '0'}"
    return format(Decimal(repr(value)).normalize(), "f")


def go_string(text: str) -> str:
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


def _scalar(value: object, numbers_as_float: bool) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int) and not numbers_as_float:
        return str(value)
    if isinstance(value, (int, float)):
        return go_float(float(value))
    if isinstance(value, str):
        return go_string(value)
    raise ValueError(f"cannot write {type(value).__name__} as JSON")


def go_json(value: object) -> str:
    """Compact JSON as Go's json.Marshal writes cog's document (plain dicts sorted, `Ordered` kept)."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(go_json(item) for item in value) + "]"
    if isinstance(value, dict):
        keys = list(value) if isinstance(value, Ordered) else sorted(value)
        return "{" + ",".join(f"{go_string(str(key))}:{go_json(value[key])}" for key in keys) + "}"
    return _scalar(value, numbers_as_float=False)


def go_json_indent(value: object, level: int = 0) -> str:
    """JSON as Go's json.MarshalIndent(v, "", "  ") writes a document decoded by json.Unmarshal into
    map[string]any: every object's keys sorted (no order survives the decoding), every number a float64.
    """
    inner = INDENT * (level + 1)
    if isinstance(value, dict) and value:
        members = [f"{inner}{go_string(str(key))}: {go_json_indent(value[key], level + 1)}" for key in sorted(value)]
    elif isinstance(value, (list, tuple)) and value:
        members = [inner + go_json_indent(item, level + 1) for item in value]
    elif isinstance(value, dict):
        return "{}"
    elif isinstance(value, (list, tuple)):
        return "[]"
    else:
        return _scalar(value, numbers_as_float=True)
    brackets = "{}" if isinstance(value, dict) else "[]"
    return brackets[0] + "\n" + ",\n".join(members) + "\n" + INDENT * level + brackets[1]
