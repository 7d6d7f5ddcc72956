"""ConfigError, and pydantic's validation errors turned into lines that start with the key.

Each line reads `upstreams[0].weight: must be at least 0.001`: the key path as it is
written in TOML, then what is wrong in words. Lists and tables that have the wrong shape
show the field's declared example.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticUndefined

from .fields import bare, field_keys, hints, toml_value

# At most this many problems are listed; the rest are counted.
MAX_LINES = 10

_SCALARS = {
    "string_type": "must be a string",
    "int_type": "must be a whole number",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "missing": "required",
}
_PLURALS = {str: "strings", int: "whole numbers", float: "numbers", bool: "true/false values"}
_TABLE_TYPES = ("model_type", "model_attributes_type", "dict_type", "mapping_type")
_LIST_TYPES = ("tuple_type", "list_type")


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key at fault."""


def key_path(loc: Sequence[str | int], at: str = "") -> str:
    """('upstreams', 0, 'tokens', 1) -> 'upstreams[0].tokens[1]'; `at` is appended."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    if at:
        path += at if at.startswith("[") or not path else f".{at}"
    return path


def from_validation_error(exc: ValidationError, root: type[BaseModel]) -> ConfigError:
    """One line per problem (the first ones), each starting with its key path."""
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        line = describe(error, root)
        if line not in lines:
            lines.append(line)
    shown = lines[:MAX_LINES]
    if len(lines) > MAX_LINES:
        shown.append(f"(and {len(lines) - MAX_LINES} more)")
    return ConfigError("\n".join(shown))


def describe(error: ErrorDetails, root: type[BaseModel] | None = None) -> str:
    """`key.path: what is wrong`, for one of pydantic's errors under `root`."""
    loc = tuple(error["loc"])
    kind = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    if kind in _SCALARS and kind != "missing" and root is not None and len(loc) > 1:
        # An item of the wrong type in a list or table of plain values: the list is wrong.
        parent, field = _declared_at(root, loc[:-1])
        origin = get_origin(parent)
        if origin in (dict, Mapping) or (
            origin is tuple and not _is_model(bare(get_args(parent)[0]))
        ):
            shape = "tuple_type" if origin is tuple else "dict_type"
            return f"{key_path(loc[:-1])}: {_shape(shape, loc[:-1], parent, field)}"
    at = str(ctx.get("at", "")) if kind == "config" else ""
    return f"{key_path(loc, at)}: {reason(error, root)}"


def reason(error: ErrorDetails, root: type[BaseModel] | None = None) -> str:
    """What is wrong, in words, for one of pydantic's errors (`root`: the model validated)."""
    loc = tuple(error["loc"])
    kind = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    if kind == "config":
        return str(ctx["reason"])
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}"
    if kind == "literal_error":
        return f"{error['input']!r} is not one of {ctx['expected']}"
    if kind == "extra_forbidden":  # the section's own check says more; this is a backstop
        return "unknown setting"
    target, field = _declared_at(root, loc) if root is not None else (None, None)
    if kind in _TABLE_TYPES or kind in _LIST_TYPES:
        return _shape(kind, loc, target, field)
    return error["msg"]


def _shape(kind: str, loc: tuple[str | int, ...], target: Any, field: FieldInfo | None) -> str:
    """'must be a table' / 'must be a list of ...', with the declared example if any."""
    header = str(loc[0]) if len(loc) == 1 else ""
    if _is_model(target):
        return f"must be a table ([{header}])" if header else "must be a table"
    example = hints(field).example if field is not None else PydanticUndefined
    shown = "" if example is PydanticUndefined else f" (e.g. {toml_value(example)})"
    if get_origin(target) is tuple:
        item = bare(get_args(target)[0])
        if _is_model(item):
            if header:
                return f"must be an array of tables ([[{header}]])"
            return "must be an array of tables"
        return f"must be a list of {_PLURALS.get(item, 'values')}{shown}"
    if kind in _LIST_TYPES:
        return f"must be a list{shown}"
    if get_origin(target) in (dict, Mapping):
        value = bare(get_args(target)[1])
        if value in _PLURALS:
            return f"must be a table of {_PLURALS[value]}{shown}"
    return f"must be a table{shown}"


def _declared_at(root: type[BaseModel], loc: Sequence[str | int]) -> tuple[Any, FieldInfo | None]:
    """The declared type (and field) at `loc`, or (None, None) where it cannot be told."""
    target: Any = root
    field: FieldInfo | None = None
    for part in loc:
        target = bare(target)
        if _is_model(target):
            field = _field(target, part)
            if field is None:
                return None, None
            target = field.annotation
            continue
        field = None
        origin, args = get_origin(target), get_args(target)
        if origin is tuple and isinstance(part, int) and args:
            target = args[0]
        elif origin in (dict, Mapping) and len(args) == 2:
            target = args[1]
        else:
            return None, None
    return bare(target), field


def _field(model: type[BaseModel], key: str | int) -> FieldInfo | None:
    for name, field in model.model_fields.items():
        if key in field_keys(name, field):
            return field
    return None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)
