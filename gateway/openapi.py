"""The OpenAPI 3.1 document the gateway serves at /openapi.json.

Written by hand rather than derived from the handlers: it is a contract (tests run
schemathesis against it), so a change to it should be a deliberate edit. It follows the
configuration only where the surface does: which endpoints need which key, and whether
/metrics is on the API port.
"""

from __future__ import annotations

from typing import Any

from . import __version__
from .api.parse import MAX_IMAGES, MAX_PROMPT
from .config import Config

_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_REQUEST_ID = {
    "x-request-id": {
        "description": "The gateway's id for this request; quote it when reporting a problem.",
        "schema": {"type": "string"},
    }
}
_QUALITIES = ["auto", "low", "medium", "high", "xhigh", "max", "standard", "hd"]
_NULLABLE_STRING = {"type": ["string", "null"]}

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


def _scalar_fields() -> dict[str, Any]:
    """The scalar fields shared by generations and edits, as the JSON form types them."""
    return {
        "prompt": {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT},
        "model": {
            **_NULLABLE_STRING,
            "description": "A Nano Banana model or an alias (gpt-image-1, dall-e-3, ...).",
        },
        "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 10},
        "size": {
            **_NULLABLE_STRING,
            "description": "'auto' or WIDTHxHEIGHT (ratio between 1:3 and 3:1).",
            "examples": ["auto", "1024x1024", "1536x1024", "1024x1536"],
        },
        "quality": {"type": ["string", "null"], "enum": [*_QUALITIES, None]},
        "response_format": {"type": ["string", "null"], "enum": ["url", "b64_json", None]},
        "output_format": {"type": ["string", "null"], "enum": ["png", "jpeg", "webp", None]},
        "output_compression": {"type": ["integer", "null"], "minimum": 0, "maximum": 100},
        "background": {
            "type": ["string", "null"],
            "enum": ["auto", "opaque", "transparent", None],
        },
        "stream": {"type": ["boolean", "null"]},
        "partial_images": {"type": ["integer", "null"], "minimum": 0, "maximum": 3},
        "user": _NULLABLE_STRING,
        "safety_identifier": _NULLABLE_STRING,
        "moderation": _NULLABLE_STRING,
        "style": _NULLABLE_STRING,
        "input_fidelity": _NULLABLE_STRING,
        "prompt_cache_key": _NULLABLE_STRING,
    }


def _multipart_fields() -> dict[str, Any]:
    """The same fields as multipart text parts (the SDKs' form of an edit)."""
    binary = {"type": "string", "format": "binary"}
    files = {"type": "array", "items": binary, "maxItems": MAX_IMAGES}
    return {
        "image": {**files, "description": "One or more image files (PNG, JPEG, WebP, GIF)."},
        "image[]": {**files, "description": "The SDKs' name for a list of images."},
        "mask": {**binary, "description": "Not supported: always refused with a 400."},
        "prompt": {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT},
        "model": {"type": "string"},
        "n": {"type": "integer", "minimum": 1, "maximum": 10},
        "size": {"type": "string"},
        "quality": {"type": "string", "enum": _QUALITIES},
        "response_format": {"type": "string", "enum": ["url", "b64_json"]},
        "output_format": {"type": "string", "enum": ["png", "jpeg", "webp"]},
        "output_compression": {"type": "integer", "minimum": 0, "maximum": 100},
        "background": {"type": "string", "enum": ["auto", "opaque", "transparent"]},
        "stream": {"type": "boolean"},
        "user": {"type": "string"},
        "input_fidelity": {"type": "string"},
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

    generation_body = {
        "type": "object",
        "required": ["prompt"],
        "additionalProperties": False,
        "properties": {**_scalar_fields(), "markup": _NULLABLE_STRING},
    }
    edit_json_body = {
        "type": "object",
        "required": ["prompt", "images"],
        "additionalProperties": False,
        "properties": {
            **_scalar_fields(),
            "images": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_IMAGES,
                "items": {
                    "type": "object",
                    "properties": {
                        "image_url": {
                            "type": "string",
                            "description": "A public http(s) URL or a data:image/...;base64, URI.",
                        },
                        "file_id": {"type": "string", "description": "Not supported (400)."},
                    },
                },
            },
            "mask": {"type": ["object", "null"], "description": "Not supported (400)."},
        },
    }
    paths: dict[str, Any] = {
        "/v1/images/generations": {
            "post": _image_operation(
                "Create images from a prompt.",
                {
                    "required": True,
                    "content": {"application/json": {"schema": generation_body}},
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
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["prompt"],
                                "properties": _multipart_fields(),
                            },
                            "encoding": {
                                "image": {"contentType": "image/png, image/jpeg, image/webp"},
                                "image[]": {"contentType": "image/png, image/jpeg, image/webp"},
                            },
                        },
                        "application/json": {"schema": edit_json_body},
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
        "/admin/upstreams": {
            "get": {
                "summary": "Pool state: upstreams and tokens (by redacted id).",
                "security": [{"adminKey": []}, {"adminKeyHeader": []}],
                "responses": {
                    "200": _json("The pool.", {"type": "object"}),
                    "401": _error(401),
                    "404": {**_error(404), "description": "No [admin] key is configured."},
                },
            }
        },
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
                "metricsKey": {"type": "http", "scheme": "bearer"},
            },
            "schemas": _SCHEMAS,
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
