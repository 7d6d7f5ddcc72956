"""The vocabulary settings are declared in: value types, `setting()` and the section base.

A setting is declared once, as a typed field with `setting(default, doc, ...)`: the type
and bounds validate it, the doc and example end up in the README's reference, and the
field names are the keys a TOML table may hold.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationInfo,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError, PydanticUndefined

from ..models import MODELS, base_model

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Source:
    """The validation context while reading a document (a file or the environment).

    Its presence is what tells a document from direct construction: `${VAR}` references
    expand from `env` (when `expand`), and rules that only make sense for a whole document
    (a client needs a key) apply.
    """

    env: Mapping[str, str]
    expand: bool = True


def invalid(reason: str, at: str = "") -> PydanticCustomError:
    """A failure whose message is `reason`; `at` extends the key path (e.g. "key")."""
    return PydanticCustomError("config", "{reason}", {"reason": reason, "at": at})


# --------------------------------------------------------------------------- declaring


@dataclass(frozen=True)
class Hints:
    """How a field is shown in the reference (beyond its default and doc)."""

    example: Any = PydanticUndefined
    # None: shown as a live line when it has a default that is not empty, else commented.
    active: bool | None = None
    # An older spelling kept for compatibility: the reference only names it.
    legacy: str | None = None


def setting(
    default: Any = PydanticUndefined,
    doc: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    example: Any = PydanticUndefined,
    active: bool | None = None,
    legacy: str | None = None,
    ge: float | None = None,
    le: float | None = None,
    accepts: tuple[str, ...] = (),
    secret: bool = False,
    validate_default: bool | None = None,
) -> Any:
    """A field: its default (or `factory`), one line of doc, bounds and reference hints.

    `accepts` lists the TOML spellings of the key (the field name first); `secret` keeps
    the value out of repr().
    """
    kwargs: dict[str, Any] = {"description": doc, "repr": not secret}
    if factory is not None:
        kwargs["default_factory"] = factory
    else:
        kwargs["default"] = default
    if example is not PydanticUndefined:
        kwargs["examples"] = [example]
    if ge is not None:
        kwargs["ge"] = ge
    if le is not None:
        kwargs["le"] = le
    if accepts:
        kwargs["validation_alias"] = AliasChoices(*accepts)
    if validate_default is not None:
        kwargs["validate_default"] = validate_default
    extra = {"x-active": active, "x-legacy": legacy}
    kwargs["json_schema_extra"] = {k: v for k, v in extra.items() if v is not None}
    return Field(**kwargs)


def hints(field: FieldInfo) -> Hints:
    """The reference hints `setting()` stored on a field."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    active = extra.get("x-active")
    legacy = extra.get("x-legacy")
    return Hints(
        example=field.examples[0] if field.examples else PydanticUndefined,
        active=active if isinstance(active, bool) else None,
        legacy=legacy if isinstance(legacy, str) else None,
    )


def field_keys(name: str, field: FieldInfo) -> list[str]:
    """The TOML spellings of the field called `name` (its name, or what it `accepts`)."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [c for c in alias.choices if isinstance(c, str)]
    return [alias if isinstance(alias, str) else name]


def toml_keys(model: type[BaseModel]) -> list[str]:
    """The keys a table for `model` may hold, in declaration order."""
    return [key for name, field in model.model_fields.items() for key in field_keys(name, field)]


def bare(tp: Any) -> Any:
    """A declared type without Annotated[...] and without `| None`."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, UnionType):
        rest = [a for a in get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return bare(rest[0])
    return tp


def toml_value(value: Any) -> str:
    """`value` written as a TOML value (inline tables and arrays on one line)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        items = ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


class Section(BaseModel):
    """A TOML table: frozen, and unknown keys are refused with the list of known ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data  # a model instance passes; anything else fails as "must be a table"
        allowed = toml_keys(cls)
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            close = difflib.get_close_matches(unknown[0], allowed, n=1)
            guess = f"; did you mean {close[0]}?" if close else ""
            raise invalid(
                f"unknown setting (allowed: {', '.join(sorted(allowed))}){guess}", at=unknown[0]
            )
        return cls.prepare(data)

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Rules on the raw table that come before its fields are checked."""
        return data


# --------------------------------------------------------------------------- value types


def _expand(value: Any, info: ValidationInfo) -> Any:
    """`${VAR}` from the document's environment; unset or empty is an error."""
    source = info.context
    if not isinstance(source, Source) or not source.expand or not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        var = m.group(1)
        if not source.env.get(var):
            raise invalid(f"environment variable {var} is not set")
        return source.env[var]

    return _ENV_REF.sub(sub, value)


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty string")
    return value


def _trimmed(value: str) -> str:
    if not value.strip() or value != value.strip():
        raise ValueError("empty, or has spaces around it")
    return value


def _long_enough(value: str) -> str:
    if len(value) < 8:
        raise ValueError("too short (at least 8 characters)")
    return value


def _sha256_hex(value: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise ValueError(
            'must be 64 hex digits (e.g. the output of `printf %s "$KEY" | sha256sum`)'
        )
    return value.lower()


def _label(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        raise ValueError("use letters, digits, '-', '_' or '.' (it is a label)")
    return value


def _model_name(value: str) -> str:
    if base_model(value) not in MODELS:
        raise ValueError(f"{value!r} is not one of {', '.join(MODELS)}")
    return value


def _model_pattern(value: str) -> str:
    if any(c in value for c in "*?["):
        if not any(fnmatch.fnmatchcase(m, value) for m in MODELS):
            raise ValueError(f"{value!r} matches none of {', '.join(MODELS)}")
    elif base_model(value) not in MODELS:
        raise ValueError(
            f"{value!r} is not one of {', '.join(MODELS)} "
            "(list gateway models, not the aliases that lead to them)"
        )
    return value


def _network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a network like 10.1.0.0/16") from None
    return value


def _redis_url(value: str) -> str:
    if not re.match(r"^(redis|rediss|unix)://", value):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return value


def _database_url(value: str) -> str:
    if not value.startswith(("postgresql://", "postgres://")):
        raise ValueError("must start with postgresql:// (or postgres://)")
    return value


# Booleans are not numbers, floats are not whole numbers, strings are neither.
Number = Annotated[float, Strict()]
WholeNumber = Annotated[int, Strict()]
Flag = Annotated[bool, Strict()]
Text = Annotated[str, Strict()]
NonEmpty = Annotated[str, Strict(), AfterValidator(_non_blank)]
Label = Annotated[str, Strict(), AfterValidator(_label)]
# A gateway model name (a variant such as 'nano-banana-pro:official' included).
ModelName = Annotated[str, Strict(), AfterValidator(_model_name)]
# A gateway model name or an fnmatch pattern that matches at least one.
ModelPattern = Annotated[str, Strict(), AfterValidator(_model_pattern)]
Network = Annotated[str, Strict(), AfterValidator(_network)]
# Secrets: `${VAR}` in them expands from the environment when a document is read.
Token = Annotated[str, Strict(), BeforeValidator(_expand), AfterValidator(_trimmed)]
Key = Annotated[str, Strict(), BeforeValidator(_expand), AfterValidator(_long_enough)]
KeyDigest = Annotated[str, Strict(), BeforeValidator(_expand), AfterValidator(_sha256_hex)]
RedisURL = Annotated[str, Strict(), BeforeValidator(_expand), AfterValidator(_redis_url)]
DatabaseURL = Annotated[str, Strict(), BeforeValidator(_expand), AfterValidator(_database_url)]
