"""The fields of an OpenAI images request, each declared once.

`/v1/images/generations` takes JSON; `/v1/images/edits` takes multipart (text parts and file
parts, as the SDKs send it) or JSON. Each field says where it may appear, what it may hold
and what it is for. The parser (`api/parse.py`) checks requests against these declarations,
translation (`translate.py`) takes its limits on n and output formats from here, and the
request bodies of the OpenAPI document (`api/openapi.py`) are generated from them, so
validation and the document cannot drift apart.

JSON null is accepted for every nullable field and means "not sent" (the SDKs send null
for unset fields).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Endpoint = Literal["generations", "edits"]
# The body forms a field can come in: a JSON member, a multipart text part, a file part.
Form = Literal["json", "text", "file"]
JsonType = Literal["string", "integer", "boolean", "array", "object"]

GENERATIONS: Endpoint = "generations"
EDITS: Endpoint = "edits"
JSON: Form = "json"
TEXT: Form = "text"
FILE: Form = "file"

MAX_PROMPT = 32000
MAX_IMAGES = 16
MIN_N = 1
MAX_N = 10
QUALITIES = ("auto", "low", "medium", "high", "xhigh", "max", "standard", "hd")
BACKGROUNDS = ("auto", "opaque", "transparent")
RESPONSE_FORMATS = ("url", "b64_json")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
MIN_COMPRESSION = 0
MAX_COMPRESSION = 100
COMPLEXITIES = ("low", "medium", "high")
_NO_GIF = (
    "Animated GIF output is not supported by the Nano Banana models; ask for output_format "
    "png, jpeg or webp."
)
_NO_SVG = (
    "SVG output is not supported by the Nano Banana models; ask for output_format png, jpeg "
    "or webp."
)
MIN_PARTIAL_IMAGES = 0
MAX_PARTIAL_IMAGES = 3


@dataclass(frozen=True)
class Field:
    """One request field: where it may appear and what it may hold."""

    name: str
    doc: str
    # JSON types besides null; () is any value, not checked.
    types: tuple[JsonType, ...] = ("string",)
    # JSON null is accepted and means the default.
    nullable: bool = True
    required: bool = False
    endpoints: tuple[Endpoint, ...] = (GENERATIONS, EDITS)
    forms: tuple[Form, ...] = (JSON, TEXT)
    enum: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    min_length: int | None = None
    max_length: int | None = None
    # Arrays, and file parts that may be repeated: how many items.
    min_items: int | None = None
    max_items: int | None = None
    # For an array of objects: the members each object may carry.
    items: tuple[Field, ...] = ()
    # Accepted, but does not change the picture.
    ignored: bool = False
    # Declared (so the error names it) but refused whenever it is sent: this message.
    refused: str = ""
    # The allowed values and bounds are enforced when the request is translated into a job
    # (where the defaults are decided), not when it is parsed; the type is checked on parse.
    checked_on_translation: bool = False
    examples: tuple[str, ...] = ()

    def on(self, endpoint: Endpoint, *forms: Form) -> bool:
        """Whether the field is taken on this endpoint, in any of these forms (any at all
        when none is given)."""
        return endpoint in self.endpoints and (not forms or any(f in self.forms for f in forms))

    @property
    def scalar(self) -> bool:
        """A single string, number or boolean (or any value): checked by the common rules.
        Lists and objects (images, mask) have rules of their own."""
        return not any(t in ("array", "object") for t in self.types)


_IMAGE_REFERENCE = (
    Field(
        "image_url",
        "A public http(s) URL or a data:image/...;base64, URI.",
        nullable=False,
        forms=(JSON,),
    ),
    Field("file_id", "Not supported (400).", nullable=False, forms=(JSON,)),
)

# Declaration order is the order the parser checks fields in, so that of several faults in
# one request the same one is always reported.
FIELDS: tuple[Field, ...] = (
    Field(
        "prompt",
        "What to make, or how to change the images.",
        nullable=False,
        required=True,
        min_length=1,
        max_length=MAX_PROMPT,
    ),
    Field("quality", "The quality asked for.", enum=QUALITIES),
    Field("background", "The background; transparent is refused.", enum=BACKGROUNDS),
    Field("stream", "Answer as an event stream.", types=("boolean",)),
    Field(
        "partial_images",
        "Partial images to stream; none are made.",
        types=("integer",),
        minimum=MIN_PARTIAL_IMAGES,
        maximum=MAX_PARTIAL_IMAGES,
        ignored=True,
    ),
    Field("user", "The end user, for the caller's own tracking.", ignored=True),
    Field("safety_identifier", "The end user, for safety tracking.", ignored=True),
    Field("moderation", "The moderation level.", ignored=True),
    Field("style", "The DALL-E 3 style.", ignored=True),
    Field("model", "A Nano Banana model or an alias (gpt-image-1, dall-e-3, ...)."),
    Field(
        "n",
        "How many images to make.",
        types=("integer",),
        minimum=MIN_N,
        maximum=MAX_N,
        checked_on_translation=True,
    ),
    Field(
        "size",
        "'auto' or WIDTHxHEIGHT (ratio between 1:3 and 3:1).",
        examples=("auto", "1024x1024", "1536x1024", "1024x1536"),
    ),
    Field(
        "response_format",
        "A link or the image in base64; GPT image model names default to b64_json.",
        enum=RESPONSE_FORMATS,
        checked_on_translation=True,
    ),
    Field(
        "output_format",
        "The image format; other than png needs b64_json.",
        enum=OUTPUT_FORMATS,
        checked_on_translation=True,
    ),
    Field(
        "output_compression",
        "Compression for jpeg and webp, in percent.",
        types=("integer",),
        minimum=MIN_COMPRESSION,
        maximum=MAX_COMPRESSION,
        checked_on_translation=True,
    ),
    Field(
        "complexity",
        "Planning effort; the Nano Banana models have none to set.",
        enum=COMPLEXITIES,
        ignored=True,
    ),
    Field(
        "frame_count",
        "Frames of an animated GIF: not supported (400).",
        types=("integer",),
        refused=_NO_GIF,
    ),
    Field(
        "frame_duration_ms",
        "Frame length of an animated GIF: not supported (400).",
        types=("integer",),
        refused=_NO_GIF,
    ),
    Field("svg", "SVG output: not supported (400).", types=(), refused=_NO_SVG),
    Field("input_fidelity", "How closely an edit keeps the input.", types=(), ignored=True),
    Field("prompt_cache_key", "A key for the caller's prompt cache.", types=(), ignored=True),
    Field("markup", "Markup over the input image.", types=(), ignored=True),
    Field(
        "images",
        "The images to edit or combine, in order.",
        types=("array",),
        nullable=False,
        required=True,
        endpoints=(EDITS,),
        forms=(JSON,),
        min_items=1,
        max_items=MAX_IMAGES,
        items=_IMAGE_REFERENCE,
    ),
    Field(
        "image",
        "One or more image files (PNG, JPEG, WebP, GIF).",
        types=("array",),
        nullable=False,
        endpoints=(EDITS,),
        forms=(FILE,),
        max_items=MAX_IMAGES,
    ),
    Field(
        "image[]",
        "The SDKs' name for a list of images.",
        types=("array",),
        nullable=False,
        endpoints=(EDITS,),
        forms=(FILE,),
        max_items=MAX_IMAGES,
    ),
    Field(
        "mask",
        "A PNG with alpha, as large as the first image (a file part, or an object with "
        "image_url): the answer keeps the first image where the mask is opaque and takes "
        "the edit where it is fully transparent.",
        types=("object",),
        endpoints=(EDITS,),
        forms=(JSON, FILE),
    ),
)

BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}


def fields_for(endpoint: Endpoint, *forms: Form) -> tuple[Field, ...]:
    """The fields taken on an endpoint in any of these forms (in any form when none is
    given), in declaration order."""
    return tuple(f for f in FIELDS if f.on(endpoint, *forms))


def names(endpoint: Endpoint, *forms: Form) -> frozenset[str]:
    """The names of `fields_for(endpoint, *forms)`."""
    return frozenset(f.name for f in fields_for(endpoint, *forms))
