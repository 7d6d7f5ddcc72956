"""What a call to a provider carries beyond the prompt, and what each provider has refused.

The gateway chooses some of a provider call's fields itself: the provider's model id, the
aspect ratio and resolution it derived from `size`, `count`, images inline as data: URIs.
A provider may not take one of them (its document does not promise it, or it changed); a
400 about such a field is the gateway's translation being refused, not the caller's fault.
The pool then moves the request to another upstream and the upstream remembers, per model
and field, that it refuses it: later requests are sent without the field where its value is
the provider's default anyway (a 1:1, 1K, one-image call), or go elsewhere.

Pure and table-tested (tests/test_forms.py); the clock is passed in.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from ..types import Job

# A refusal is remembered this long; then the field is tried again (the provider may have
# added it, or the refusal may have been a passing fault).
REMEMBER_SECONDS = 600.0


class Field(enum.Enum):
    """A part of a provider call that the gateway chose, not the caller."""

    MODEL = "model"  # the provider's id for the gateway model
    ASPECT_RATIO = "aspect_ratio"
    RESOLUTION = "resolution"  # defapi: image_size
    COUNT = "count"  # images per call
    INLINE_IMAGES = "inline_images"  # uploads sent as data: URIs rather than links

    @property
    def param(self) -> str:
        """The OpenAI parameter this field was made from, for the caller's error."""
        return _OPENAI_PARAM[self]

    @classmethod
    def named(cls, value: str | None) -> Field | None:
        """The field with this value (an UpstreamError's `param`), or None."""
        return next((field for field in cls if field.value == value), None)


_OPENAI_PARAM = {
    Field.MODEL: "model",
    Field.ASPECT_RATIO: "size",
    Field.RESOLUTION: "size",
    Field.COUNT: "n",
    Field.INLINE_IMAGES: "image",
}


def needed(job: Job) -> frozenset[Field]:
    """The fields a job cannot do without: those whose value is not what the provider
    makes when the field is left out (1:1, 1K, one image, no upload)."""
    fields = {Field.MODEL}
    if job.aspect_ratio not in (None, "1:1"):
        fields.add(Field.ASPECT_RATIO)
    if job.resolution not in (None, "1K"):
        fields.add(Field.RESOLUTION)
    if job.count > 1:
        fields.add(Field.COUNT)
    if any(image.startswith("data:") for image in job.images):
        fields.add(Field.INLINE_IMAGES)
    return frozenset(fields)


# Words in a provider's refusal that name the field it refused, first match wins: the
# prompt (None) is the caller's own input; the images are the inline form's only where
# uploads went inline (else they are the caller's links).
_NAMED: tuple[tuple[re.Pattern[str], Field | None], ...] = (
    (re.compile(r"prompt", re.I), None),
    (re.compile(r"aspect", re.I), Field.ASPECT_RATIO),
    (re.compile(r"image_size|resolution|\bsize\b", re.I), Field.RESOLUTION),
    (re.compile(r"\bcount\b|\bnumber of images\b", re.I), Field.COUNT),
    (
        re.compile(r"data:|base64|data ?uri|image_urls|\bimages?\b|\burls?\b", re.I),
        Field.INLINE_IMAGES,
    ),
    (re.compile(r"\bmodel\b", re.I), Field.MODEL),
)


def refused_field(message: str, job: Job) -> Field | None:
    """The gateway's field a refusal is about, or None when it is about the caller's own
    input (the prompt). A refusal about images is the inline form's when the job sent
    uploads inline; one that names nothing is put down to the gateway's choice of model
    id, the one field every call carries."""
    for pattern, field in _NAMED:
        if pattern.search(message):
            if field is Field.INLINE_IMAGES and field not in needed(job):
                return None
            return field
    return Field.MODEL


@dataclass(frozen=True)
class Refusal:
    """One remembered refusal."""

    model: str
    field: Field
    reason: str
    until: float  # monotonic


class Refusals:
    """What one upstream has refused, per gateway model and field, for a while."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, Field], Refusal] = {}

    def add(self, model: str, field: Field, reason: str, now: float) -> bool:
        """Remember a refusal; True when it is news (worth logging)."""
        news = not self.refuses(model, field, now)
        self._by_key[(model, field)] = Refusal(model, field, reason[:200], now + REMEMBER_SECONDS)
        return news

    def __bool__(self) -> bool:
        """Whether any refusal is remembered (expired ones included until active() drops
        them): the common case, none, lets callers skip the per-field checks."""
        return bool(self._by_key)

    def refuses(self, model: str, field: Field, now: float) -> bool:
        """True while a refusal of this field for this model is remembered."""
        found = self._by_key.get((model, field))
        return found is not None and now < found.until

    def active(self, now: float) -> tuple[Refusal, ...]:
        """Every refusal still remembered (expired ones are dropped)."""
        for key in [k for k, r in self._by_key.items() if now >= r.until]:
            del self._by_key[key]
        return tuple(self._by_key.values())


class Capacity:
    """Images one call may ask for, per gateway model, as learned from short answers."""

    def __init__(self, declared: int) -> None:
        self.declared = declared
        self._learned: dict[str, int] = {}

    def per_call(self, model: str) -> int:
        """The most images to ask one call for."""
        return self._learned.get(model, self.declared)

    def answered(self, model: str, asked: int, got: int) -> bool:
        """A call asked for `asked` and returned `got`: lower the maximum if it fell short
        (never below one). True when the maximum changed."""
        if got >= asked or got < 1:
            return False
        now = self.per_call(model)
        if got < now:
            self._learned[model] = got
            return True
        return False

    def learned(self) -> dict[str, int]:
        """model -> the lowered maximum, for the admin view."""
        return dict(self._learned)
