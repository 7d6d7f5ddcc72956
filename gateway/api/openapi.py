"""The OpenAPI 3.1 document the gateway serves at /openapi.json.

Written by hand rather than derived from the handlers: it is a contract (tests run
schemathesis against it), so a change to it should be a deliberate edit. The request
bodies of the image endpoints are the exception: they are generated from the field
declarations in `gateway/fields.py`, which the parser checks requests against, so the
document and the validation cannot disagree. It follows the configuration only where the
surface does: which endpoints need which key, and whether /metrics is on the API port.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..config import Config
from ..fields import EDITS, FILE, GENERATIONS, JSON, TEXT, Endpoint, Field, Form, fields_for
from .openapi_batches import BATCH_SCHEMAS, batch_paths

_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_REQUEST_ID = {
    "x-request-id": {
        "description": "The gateway's id for this request; quote it when reporting a problem.",
        "schema": {"type": "string"},
    }
}
_BINARY = {"type": "string", "format": "binary"}
_IMAGE_TYPES = {"contentType": "image/png, image/jpeg, image/webp"}

_ERROR_TEXT = {
    400: "Invalid input; `param` names the field at fault.",
    401: "Missing or wrong key.",
    404: "Unknown model or route.",
    413: "The request body is too large.",
    429: "Rate limited (the caller's limit or every upstream token); see `retry-after`.",
    502: "An upstream failed, answered badly, or made fewer images than asked for.",
    503: "No usable upstream right now, or the gateway is shutting down; see `retry-after`.",
    504: "The upstream took too long.",
}


def _error(status: int) -> dict[str, Any]:
    return {
        "description": _ERROR_TEXT[status],
        "headers": _REQUEST_ID,
        "content": {"application/json": {"schema": _ERROR_REF}},
    }


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _REQUEST_ID,
        "content": {"application/json": {"schema": schema}},
    }


def _field_schema(f: Field, form: Form) -> dict[str, Any]:
    """One field's schema, as it is carried in this form."""
    if f.refused:
        # Named so the 400 can name it, but no value is taken (null means not sent).
        return {"type": "null", "description": f"{f.doc} {f.refused}"}
    schema = _typed(f, form)
    if f.enum:
        # Null is a type of its own: an enum has to list it as well.
        nullable = form == JSON and f.nullable
        schema["enum"] = [*f.enum, None] if nullable else list(f.enum)
    for keyword, value in (
        ("minimum", f.minimum),
        ("maximum", f.maximum),
        ("minLength", f.min_length),
        ("maxLength", f.max_length),
        ("minItems", f.min_items),
        ("maxItems", f.max_items),
    ):
        if value is not None:
            schema[keyword] = value
    if f.items:
        properties = {i.name: _field_schema(i, JSON) for i in f.items}
        schema["items"] = {"type": "object", "properties": properties}
    schema["description"] = f.doc + (" Accepted, and ignored." if f.ignored else "")
    if f.examples:
        schema["examples"] = list(f.examples)
    return schema


def _typed(f: Field, form: Form) -> dict[str, Any]:
    """The type part of a field's schema in this form (none: any value)."""
    if form == FILE:
        return {"type": "array", "items": _BINARY} if "array" in f.types else dict(_BINARY)
    if form == TEXT:
        # A text part is always text; the parser reads numbers and booleans from it.
        return {"type": f.types[0] if f.types else "string"}
    if not f.types:
        return {}
    types: list[str] = [*f.types, "null"] if f.nullable else list(f.types)
    return {"type": types[0] if len(types) == 1 else types}


def _admin(summary: str, ok: dict[str, Any], *, basic: bool = False) -> dict[str, Any]:
    """An /admin operation: the admin key (and, for the page, Basic auth), 401, 404."""
    security: list[dict[str, list[str]]] = [{"adminKey": []}, {"adminKeyHeader": []}]
    if basic:
        security.insert(1, {"adminBasic": []})
    return {
        "get": {
            "summary": summary,
            "security": security,
            "responses": {
                "200": ok,
                "401": _error(401),
                "404": {**_error(404), "description": "No [admin] key is configured."},
            },
        }
    }


def _body_schema(endpoint: Endpoint, *forms: Form) -> dict[str, Any]:
    """The object schema of a request body on this endpoint, in these forms."""
    fields = fields_for(endpoint, *forms)
    properties = {f.name: _field_schema(f, next(x for x in forms if x in f.forms)) for f in fields}
    schema: dict[str, Any] = {
        "type": "object",
        "required": [f.name for f in fields if f.required],
        "properties": properties,
    }
    if forms == (JSON,):
        schema["additionalProperties"] = False
    return schema


def _multipart_edit() -> dict[str, Any]:
    """The SDKs' form of an edit: files and text parts."""
    files = [f.name for f in fields_for(EDITS, FILE) if "array" in f.types]
    return {
        # Files first: a field taken both as a file and as text is documented as the file.
        "schema": _body_schema(EDITS, FILE, TEXT),
        "encoding": {name: _IMAGE_TYPES for name in files},
    }


def _image_operation(
    summary: str, request_body: dict[str, Any], secured: bool, kind: str
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {
            "description": f"The images, or with `stream: true` the {kind}.completed events.",
            "headers": _REQUEST_ID,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ImagesResponse"}},
                # OpenAPI before 3.2 reads an event stream's schema as that of each event.
                "text/event-stream": {
                    "schema": {
                        "type": "object",
                        "required": ["event", "data"],
                        "properties": {
                            "event": {"enum": [f"{kind}.completed", "error", "message"]},
                            "data": {
                                "type": "string",
                                "description": "The event as JSON; the last is [DONE].",
                            },
                        },
                    }
                },
            },
        },
    }
    for status in (400, 401, 404, 413, 429, 502, 503, 504):
        if status != 401 or secured:
            responses[str(status)] = _error(status)
    operation: dict[str, Any] = {
        "summary": summary,
        "requestBody": request_body,
        "responses": responses,
    }
    if secured:
        operation["security"] = [{"clientKey": []}]
    return operation


def openapi_document(config: Config) -> dict[str, Any]:
    """The OpenAPI document for a gateway built from this configuration."""
    secured = bool(config.clients)
    client_security: dict[str, Any] = {"security": [{"clientKey": []}]} if secured else {}
    unauthorized: dict[str, Any] = {"401": _error(401)} if secured else {}

    paths: dict[str, Any] = {
        "/v1/images/generations": {
            "post": _image_operation(
                "Create images from a prompt.",
                {
                    "required": True,
                    "content": {"application/json": {"schema": _body_schema(GENERATIONS, JSON)}},
                },
                secured,
                "image_generation",
            )
        },
        "/v1/images/edits": {
            "post": _image_operation(
                "Edit or combine images with a prompt.",
                {
                    "required": True,
                    "content": {
                        "multipart/form-data": _multipart_edit(),
                        "application/json": {"schema": _body_schema(EDITS, JSON)},
                    },
                },
                secured,
                "image_edit",
            )
        },
        "/v1/images/store/{name}": {
            "get": {
                "summary": "An image the gateway hosts for a `url` answer (kept for an hour).",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {
                        "description": "The image.",
                        "headers": _REQUEST_ID,
                        "content": {
                            "image/png": {"schema": {"type": "string", "format": "binary"}},
                            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                            "image/webp": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    "404": _error(404),
                },
            }
        },
        "/v1/models": {
            "get": {
                "summary": "The models and aliases this gateway serves.",
                **client_security,
                "responses": {
                    "200": _json("The model list.", {"$ref": "#/components/schemas/ModelList"}),
                    **unauthorized,
                },
            }
        },
        "/v1/models/{model}": {
            "get": {
                "summary": "One model or alias.",
                **client_security,
                "parameters": [
                    {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _json("The model.", {"$ref": "#/components/schemas/Model"}),
                    "404": _error(404),
                    **unauthorized,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "The process is up.",
                "responses": {"200": _json("Up.", {"$ref": "#/components/schemas/Status"})},
            }
        },
        "/readyz": {
            "get": {
                "summary": "At least one upstream token is usable.",
                "responses": {
                    "200": _json("Ready.", {"$ref": "#/components/schemas/Status"}),
                    "503": _json("Not ready.", {"$ref": "#/components/schemas/Status"}),
                },
            }
        },
        "/admin/upstreams": _admin(
            "Pool state: upstreams and tokens (by redacted id).",
            _json("The pool.", {"type": "object"}),
        ),
        "/admin": _admin(
            "The operator's page (HTML): pool, teams, cache.",
            {
                "description": "The page.",
                "headers": _REQUEST_ID,
                "content": {"text/html": {"schema": {"type": "string"}}},
            },
            basic=True,
        ),
        "/admin/clients": _admin(
            "Each client's day so far (UTC) against its limits.",
            _json("The clients.", {"type": "object"}),
        ),
        "/openapi.json": {
            "get": {
                "summary": "This document.",
                "responses": {"200": _json("OpenAPI 3.1.", {"type": "object"})},
            }
        },
    }
    if config.server.metrics_port is None:
        metrics_op: dict[str, Any] = {
            "summary": "Prometheus metrics (text exposition format).",
            "responses": {
                "200": {
                    "description": "The metrics.",
                    "headers": _REQUEST_ID,
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
        if config.admin.metrics_key:
            metrics_op["security"] = [{"metricsKey": []}]
            metrics_op["responses"]["401"] = _error(401)
        paths["/metrics"] = {"get": metrics_op}
    paths.update(batch_paths(secured))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "nano-banana-gateway",
            "version": __version__,
            "description": (
                "The OpenAI Images API (generations, edits, models) in front of the Nano "
                'Banana image models. Every error is {"error": {"message", "type", '
                '"param", "code"}}.'
            ),
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "clientKey": {"type": "http", "scheme": "bearer"},
                "adminKey": {"type": "http", "scheme": "bearer"},
                "adminKeyHeader": {"type": "apiKey", "in": "header", "name": "x-admin-key"},
                # The admin key as the password, any user name (a browser prompts for it).
                "adminBasic": {"type": "http", "scheme": "basic"},
                "metricsKey": {"type": "http", "scheme": "bearer"},
            },
            "schemas": {**_SCHEMAS, **BATCH_SCHEMAS},
        },
    }


_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
    "Image": {
        "type": "object",
        "properties": {
            "url": {"type": "string"},
            "b64_json": {"type": "string"},
            "revised_prompt": {"type": "string"},
        },
    },
    "ImagesResponse": {
        "type": "object",
        "required": ["created", "data"],
        "properties": {
            "created": {"type": "integer"},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Image"}},
            "size": {"type": "string"},
            "quality": {"type": "string"},
            "background": {"type": "string"},
            "output_format": {"type": "string"},
        },
    },
    "Model": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
            "alias_for": {"type": "string"},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}},
            "warning": {"type": "string"},
        },
    },
    "Status": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    },
}
