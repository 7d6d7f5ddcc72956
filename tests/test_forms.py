"""The fields of a provider call that the gateway chooses, and what is learned of them:
pure functions, table-tested."""

from __future__ import annotations

import pytest

from gateway.types import Job
from gateway.upstreams.forms import (
    REMEMBER_SECONDS,
    Capacity,
    Field,
    Refusals,
    needed,
    refused_field,
)

DATA = "data:image/png;base64,iVBORw0KGgo="


def job(**kw: object) -> Job:
    base: dict[str, object] = {"action": "generate", "prompt": "p", "model": "nano-banana"}
    base.update(kw)
    return Job(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("j", "fields"),
    [
        (job(), {Field.MODEL}),
        (job(aspect_ratio="1:1", resolution="1K", count=1), {Field.MODEL}),
        (job(aspect_ratio="16:9"), {Field.MODEL, Field.ASPECT_RATIO}),
        (job(resolution="2K"), {Field.MODEL, Field.RESOLUTION}),
        (job(count=3), {Field.MODEL, Field.COUNT}),
        (job(action="edit", images=("https://x/a.png",)), {Field.MODEL}),
        (job(action="edit", images=("https://x/a.png", DATA)), {Field.MODEL, Field.INLINE_IMAGES}),
    ],
)
def test_needed(j: Job, fields: set[Field]) -> None:
    assert needed(j) == fields


@pytest.mark.parametrize(
    ("message", "j", "field"),
    [
        ("prompt is required", job(), None),
        ("The prompt is too long", job(aspect_ratio="16:9"), None),
        ("unknown field: aspect_ratio", job(aspect_ratio="16:9"), Field.ASPECT_RATIO),
        ("invalid image_size", job(resolution="2K"), Field.RESOLUTION),
        ("resolution not supported for this model", job(resolution="4K"), Field.RESOLUTION),
        ("count must be 1", job(count=2), Field.COUNT),
        ("model is invalid.", job(), Field.MODEL),
        ("model not supported", job(), Field.MODEL),
        ("images must be URLs", job(action="edit", images=(DATA,)), Field.INLINE_IMAGES),
        ("base64 images are not accepted", job(action="edit", images=(DATA,)), Field.INLINE_IMAGES),
        # About the images, but they were links: the caller's images, not the form.
        ("image could not be fetched", job(action="edit", images=("https://x/a.png",)), None),
        # Names nothing: put down to the one field every call carries.
        ("invalid request", job(), Field.MODEL),
        ("failed", job(), Field.MODEL),
    ],
)
def test_refused_field(message: str, j: Job, field: Field | None) -> None:
    assert refused_field(message, j) is field


def test_refusals_are_remembered_per_model_and_field_for_a_while() -> None:
    r = Refusals()
    assert r.add("nano-banana-2", Field.MODEL, "model not supported", now=100.0)
    assert not r.add("nano-banana-2", Field.MODEL, "again", now=101.0), "not news"
    assert r.refuses("nano-banana-2", Field.MODEL, 150.0)
    assert not r.refuses("nano-banana", Field.MODEL, 150.0)
    assert not r.refuses("nano-banana-2", Field.ASPECT_RATIO, 150.0)
    (only,) = r.active(150.0)
    assert (only.model, only.field, only.reason) == ("nano-banana-2", Field.MODEL, "again")
    later = 101.0 + REMEMBER_SECONDS
    assert not r.refuses("nano-banana-2", Field.MODEL, later)
    assert r.active(later) == ()


@pytest.mark.parametrize(
    ("asked", "got", "changed", "per_call"),
    [
        (4, 4, False, 4),
        (4, 1, True, 1),
        (4, 2, True, 2),
        (1, 1, False, 4),
        (4, 0, False, 4),  # nothing at all is a failure, not a capacity
    ],
)
def test_capacity_is_lowered_by_short_answers(
    asked: int, got: int, changed: bool, per_call: int
) -> None:
    c = Capacity(4)
    assert c.answered("nano-banana", asked, got) is changed
    assert c.per_call("nano-banana") == per_call
    assert c.per_call("nano-banana-pro") == 4, "per model"
