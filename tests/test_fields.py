"""The request fields are declared once (gateway/fields.py) and the parser, translation and
the OpenAPI document follow them. These tables are built from the declarations, so a field
added there is checked in every endpoint and form it is declared for: what they allow the
parser and the document accept, what they refuse both refuse, naming the field."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jsonschema
import pytest
import schemathesis
from PIL import Image
from starlette.requests import Request

from gateway.api.errors import OpenAIError, openai_error
from gateway.api.openapi import openapi_document
from gateway.api.parse import parse_edit, parse_edit_json, parse_generation
from gateway.config import DEFAULT_ALIASES, config_from_env, parse_config
from gateway.errors import DomainError
from gateway.fields import EDITS, FIELDS, FILE, GENERATIONS, JSON, TEXT, Field, fields_for
from gateway.shape.netguard import UrlPolicy
from gateway.translate import build_job
from gateway.types import ImageRequest

PROMPT = "a cat"
IMAGE_URL = "https://cdn.example.com/a.png"
MAX_BYTES = 1024 * 1024
# What each endpoint's JSON body needs besides the field under test.
BASES: dict[str, dict[str, Any]] = {
    GENERATIONS: {"prompt": PROMPT},
    EDITS: {"prompt": PROMPT, "images": [{"image_url": IMAGE_URL}]},
}


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 10)).save(out, "PNG")
    return out.getvalue()


PNG = _png()


def _mask_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(out, "PNG")
    return out.getvalue()


MASK = _mask_png()


# --------------------------------------------------------------------------- the parsers


def _multipart(texts: dict[str, Any], files: list[tuple[str, bytes]]) -> bytes:
    """The body the SDKs send: booleans as true/false, numbers as digits."""
    parts = [(f'name="{n}"; filename="a.png"\r\nContent-Type: image/png', d) for n, d in files]
    text = {n: str(v).lower() if isinstance(v, bool) else str(v) for n, v in texts.items()}
    parts += [(f'name="{n}"', v.encode()) for n, v in text.items()]
    out = b"".join(
        f"--fieldsb0und\r\nContent-Disposition: form-data; {head}\r\n\r\n".encode() + data + b"\r\n"
        for head, data in parts
    )
    return out + b"--fieldsb0und--\r\n"


async def _read_edit(body: bytes) -> ImageRequest:
    chunks = [body]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": chunks.pop() if chunks else b"", "more_body": False}

    headers = [(b"content-type", b"multipart/form-data; boundary=fieldsb0und")]
    request = Request({"type": "http", "method": "POST", "headers": headers}, receive)
    return await parse_edit(request, max_bytes=MAX_BYTES, policy=UrlPolicy())


def _parse_multipart(
    body: dict[str, Any], files: list[tuple[str, bytes]] | None = None
) -> ImageRequest:
    """An edit as the SDKs send it: the image as a file part, the rest as text parts (a
    None field left out, as the SDKs do)."""
    texts = {k: v for k, v in {"prompt": PROMPT, **body}.items() if v is not None}
    return asyncio.run(_read_edit(_multipart(texts, files or [("image", PNG)])))


def _parse_generation(body: dict[str, Any]) -> ImageRequest:
    return parse_generation({**BASES[GENERATIONS], **body})


def _parse_edit_json(body: dict[str, Any]) -> ImageRequest:
    return parse_edit_json({**BASES[EDITS], **body}, max_bytes=MAX_BYTES, policy=UrlPolicy())


# (endpoint, form) -> parse a body (prompt and image filled in unless the body says).
PARSERS: dict[tuple[str, str], Callable[[dict[str, Any]], ImageRequest]] = {
    (GENERATIONS, JSON): _parse_generation,
    (EDITS, JSON): _parse_edit_json,
    (EDITS, TEXT): _parse_multipart,
}


def _translated(req: ImageRequest) -> Any:
    return build_job(req, default_model="nano-banana", aliases=DEFAULT_ALIASES)


def _outcome(where: tuple[str, str], body: dict[str, Any]) -> tuple[str, OpenAIError | None]:
    """('parse' | 'translate', the OpenAI error) for a refused body, ('ok', None) else."""
    try:
        req = PARSERS[where](body)
    except DomainError as err:
        return "parse", openai_error(err)
    try:
        _translated(req)
    except DomainError as err:
        return "translate", openai_error(err)
    return "ok", None


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    field: Field
    where: tuple[str, str]
    value: Any
    accepted: bool
    kind: str  # "value": allowed values and bounds decide; "type": the type or presence

    @property
    def id(self) -> str:
        shown = repr(self.value)
        shown = shown if len(shown) <= 24 else f"{shown[:10]}...len={len(self.value)}"
        verdict = "ok" if self.accepted else "refused"
        return f"{self.where[0]}-{self.where[1]}-{self.field.name}={shown}-{verdict}"

    def body(self) -> dict[str, Any]:
        """The field's value, with what translation needs to accept every allowed value."""
        body: dict[str, Any] = {self.field.name: self.value}
        if self.field.name != "response_format":
            body["response_format"] = "b64_json"  # any output_format needs it
        return body


_WRONG_JSON_TYPES: dict[str, tuple[Any, ...]] = {
    "string": (12, ["a"], {"a": 1}, True),
    "integer": ("2", 2.5, True, [1]),
    "boolean": ("yes", 1, [True]),
}
_WRONG_TEXT: dict[str, tuple[str, ...]] = {"integer": ("two", "2.5"), "boolean": ("yes",)}


def _values(f: Field) -> list[tuple[Any, bool]]:
    """(value, accepted): the allowed values and bounds of `f`, and just outside them."""
    cases: list[tuple[Any, bool]] = [(v, True) for v in f.enum]
    if f.enum:
        cases.append((f"not-{f.enum[0]}", False))
    if f.minimum is not None:
        cases += [(f.minimum, True), (f.minimum - 1, False)]
    if f.maximum is not None:
        cases += [(f.maximum, True), (f.maximum + 1, False)]
    if f.min_length is not None:
        cases += [("x" * f.min_length, True), ("x" * (f.min_length - 1), False)]
    if f.max_length is not None:
        cases += [("x" * f.max_length, True), ("x" * (f.max_length + 1), False)]
    return cases


def _types(f: Field, form: str) -> list[tuple[Any, bool]]:
    """(value, accepted): values of other types than `f` declares, null, and for a
    required field its absence."""
    cases: list[tuple[Any, bool]] = [(None, False), ("   ", False)] if f.required else []
    if form == JSON:
        types = f.types or ("string",)
        cases += [(v, not f.types) for t in types for v in _WRONG_JSON_TYPES[t]]
        if not f.required:
            cases.append((None, f.nullable))
    else:
        cases += [(v, False) for t in f.types for v in _WRONG_TEXT.get(t, ())]
    return cases


def _refusals(f: Field) -> list[tuple[Any, bool]]:
    """A field declared only to be refused by name: any value it may hold is refused."""
    return [(v, False) for v in ("x", 3, {"a": 1})] if f.refused else []


CASES = [
    Case(f, where, value, accepted and not (f.refused and value is not None), kind)
    for f in FIELDS
    if f.scalar
    for where in PARSERS
    if f.on(*where)
    for kind, values in (
        ("value", _values(f) + _refusals(f)),
        ("type", _types(f, where[1])),
    )
    for value, accepted in values
]


@pytest.mark.parametrize("case", [c for c in CASES if c.accepted], ids=lambda c: c.id)
def test_what_the_declarations_allow_is_accepted(case):
    stage, error = _outcome(case.where, case.body())
    if case.field.checked_on_translation:
        assert (stage, error) == ("ok", None)
    else:
        # Translation may still refuse what the gateway cannot make (a transparent
        # background), but the parser takes it.
        assert stage != "parse", error


@pytest.mark.parametrize("case", [c for c in CASES if not c.accepted], ids=lambda c: c.id)
def test_what_the_declarations_refuse_is_refused_naming_the_field(case):
    stage, error = _outcome(case.where, case.body())
    assert error is not None, f"{case.id} was accepted"
    assert (error.status, error.type) == (400, "invalid_request_error")
    assert error.param == case.field.name
    # Types are checked on parse; allowed values and bounds where the declaration says.
    late = case.field.checked_on_translation and case.kind == "value"
    assert stage == ("translate" if late else "parse"), error.message


NULLABLE = [
    (where, f)
    for where in PARSERS
    if where[1] == JSON
    for f in FIELDS
    if f.scalar and f.nullable and f.on(*where)
]


def _id(x: Any) -> str:
    return x.name if isinstance(x, Field) else "-".join(x)


@pytest.mark.parametrize(("where", "f"), NULLABLE, ids=_id)
def test_null_means_the_default(where, f):
    assert PARSERS[where]({f.name: None}) == PARSERS[where]({})


def _sample(f: Field) -> Any:
    """A value the declaration allows."""
    fallback = {"integer": 1, "boolean": True}.get(f.types[0] if f.types else "string", "x")
    return next((v for v, ok in _values(f) if ok), fallback)


IGNORED = [(where, f) for where in PARSERS for f in FIELDS if f.ignored and f.on(*where)]


@pytest.mark.parametrize(("where", "f"), IGNORED, ids=_id)
def test_ignored_fields_are_accepted_and_do_not_change_the_job(where, f):
    base = {"response_format": "b64_json"}
    with_it = _translated(PARSERS[where]({**base, f.name: _sample(f)}))
    assert with_it == _translated(PARSERS[where](base))


def _taken(name: str, where: tuple[str, str]) -> bool:
    """Whether a body in this form takes a member/part of this name. A multipart text part
    may carry any name an edit takes (the image parts and the mask are read by name)."""
    forms = (EDITS,) if where[1] == TEXT else where
    return any(f.name == name and f.on(*forms) for f in FIELDS)


UNDECLARED = [
    (where, name)
    for where in PARSERS
    for name in ("negative_prompt", "seed", *(f.name for f in FIELDS))
    if not _taken(name, where)
]


@pytest.mark.parametrize(("where", "name"), UNDECLARED, ids=lambda x: str(x))
def test_fields_not_declared_for_a_body_are_refused_by_name(where, name):
    stage, error = _outcome(where, {name: "x"})
    assert stage == "parse" and error is not None
    assert (error.status, error.param) == (400, name)
    assert error.message == f"Unrecognized request argument supplied: {name}"


@pytest.mark.parametrize("f", fields_for(EDITS, TEXT), ids=lambda f: f.name)
def test_text_fields_sent_as_files_are_refused_naming_the_field(f):
    with pytest.raises(DomainError) as info:
        _parse_multipart({}, [("image", PNG), (f.name, PNG)])
    error = openai_error(info.value)
    assert (error.status, error.param) == (400, f.name)
    assert error.message == f"'{f.name}' must be a text field, not a file."


@pytest.mark.parametrize("f", fields_for(EDITS, FILE), ids=lambda f: f.name)
def test_file_parts_are_taken(f):
    if f.name == "mask":
        # Taken once, as a PNG with alpha the first image's size; the answer is composited.
        req = _parse_multipart({}, [("image", PNG), ("mask", MASK)])
        assert req.mask is not None and req.mask.startswith("data:image/png;base64,")
        _job, output = _translated(req)
        assert output.composite is not None and output.composite.mask == req.mask
        for mask in (PNG, MASK[:-8]):  # no alpha; cut short
            with pytest.raises(DomainError) as info:
                _parse_multipart({}, [("image", PNG), ("mask", mask)])
            assert openai_error(info.value).param == "mask"
        with pytest.raises(DomainError) as info:
            _parse_multipart({}, [("image", PNG), ("mask", MASK), ("mask", MASK)])
        assert openai_error(info.value).param == "mask"
        return
    req = _parse_multipart({}, [(f.name, PNG)] * (f.max_items or 1))
    assert len(req.images) == (f.max_items or 1)
    assert req.images[0].startswith("data:image/png;base64,")
    with pytest.raises(DomainError) as info:
        _parse_multipart({}, [(f.name, PNG)] * ((f.max_items or 1) + 1))
    assert openai_error(info.value).param == "image"


def test_json_edit_image_count_follows_the_declaration():
    images = next(f for f in FIELDS if f.name == "images")
    assert (images.min_items, images.max_items) == (1, 16)
    refs = [{"image_url": IMAGE_URL}]
    assert len(_parse_edit_json({"images": refs * 16}).images) == 16
    for count in (0, 17):
        with pytest.raises(DomainError) as info:
            _parse_edit_json({"images": refs * count})
        assert openai_error(info.value).param == "images"


# --------------------------------------------------------------------------- the document


def _config(**raw: Any):
    return parse_config({"upstreams": [{"name": "m", "type": "mock", "tokens": ["t"]}], **raw}, {})


CONFIGS = {
    "open": config_from_env({}),
    "secured": _config(
        clients=[{"name": "a", "key": "sk-a-0123456789"}],
        admin={"key": "admin-0123456789", "metrics_key": "metrics-0123456789"},
    ),
    "metrics-port": _config(server={"metrics_port": 9100}),
}
DOC = openapi_document(CONFIGS["secured"])

# (endpoint, media type, the forms its schema documents)
BODIES = [
    (GENERATIONS, "application/json", (JSON,)),
    (EDITS, "application/json", (JSON,)),
    (EDITS, "multipart/form-data", (FILE, TEXT)),
]


def _body_schema(endpoint: str, media: str) -> dict[str, Any]:
    content = DOC["paths"][f"/v1/images/{endpoint}"]["post"]["requestBody"]["content"]
    return content[media]["schema"]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_document_is_valid_openapi_3_1(name):
    doc = openapi_document(CONFIGS[name])
    assert doc["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(doc).validate()
    for endpoint, media, _forms in BODIES:
        content = doc["paths"][f"/v1/images/{endpoint}"]["post"]["requestBody"]["content"]
        jsonschema.Draft202012Validator.check_schema(content[media]["schema"])


@pytest.mark.parametrize(("endpoint", "media", "forms"), BODIES, ids=lambda x: str(x))
def test_every_declared_field_is_in_the_document_for_its_endpoint_and_form(endpoint, media, forms):
    schema = _body_schema(endpoint, media)
    declared = fields_for(endpoint, *forms)
    assert list(schema["properties"]) == [f.name for f in declared]
    assert schema["required"] == [f.name for f in declared if f.required]
    if forms == (JSON,):
        assert schema["additionalProperties"] is False
    for f in declared:
        prop = schema["properties"][f.name]
        nullable = forms == (JSON,) and f.nullable
        if f.enum:
            assert prop["enum"] == [*f.enum, *([None] if nullable else [])]
        for keyword, value in (
            ("minimum", f.minimum),
            ("maximum", f.maximum),
            ("minLength", f.min_length),
            ("maxLength", f.max_length),
            ("minItems", f.min_items),
            ("maxItems", f.max_items),
        ):
            assert prop.get(keyword) == value, (f.name, keyword)
        assert prop["description"].startswith(f.doc)
        if FILE in forms and FILE in f.forms:
            binary = prop["items"] if "array" in f.types else prop
            assert (binary["type"], binary["format"]) == ("string", "binary")


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.where[1] == JSON and c.value != "   "], ids=lambda c: c.id
)
def test_the_document_accepts_and_refuses_json_values_as_the_parser_does(case):
    """'   ' (blank) is left out: the document says a non-empty prompt, not a non-blank one."""
    body = {**BASES[case.where[0]], **case.body()}
    validator = jsonschema.Draft202012Validator(_body_schema(case.where[0], "application/json"))
    assert validator.is_valid(body) == case.accepted


@pytest.mark.parametrize(("endpoint", "media", "forms"), BODIES[:2], ids=lambda x: str(x))
def test_the_document_refuses_undeclared_json_fields(endpoint, media, forms):
    validator = jsonschema.Draft202012Validator(_body_schema(endpoint, media))
    assert validator.is_valid(BASES[endpoint])
    assert not validator.is_valid({**BASES[endpoint], "negative_prompt": "x"})
