"""The b64_json answer sent in pieces is the same JSON the SDK would get in one piece."""

from __future__ import annotations

import base64
import json

import pytest

from gateway.api.responses import images_b64_parts
from gateway.types import ImagesResult, Output, ProducedImage


@pytest.mark.parametrize(
    ("images", "output", "tail"),
    [
        (
            [ProducedImage(data=b"\x89PNG one", mime="image/png", size=(1024, 768))],
            Output("b64_json"),
            {"background": "opaque", "quality": "auto", "size": "1024x768", "output_format": "png"},
        ),
        (
            [
                ProducedImage(data=b"\xff\xd8 two", mime="image/jpeg", size=None),
                ProducedImage(data=bytes(range(256)), mime="image/jpeg", size=None),
            ],
            Output("b64_json", output_format="jpeg", quality="high"),
            {"background": "opaque", "quality": "high", "output_format": "jpeg"},
        ),
    ],
)
def test_b64_parts_join_into_the_images_answer(images, output, tail) -> None:
    parts = images_b64_parts(ImagesResult(images=images), output)
    body = json.loads(b"".join(parts))
    assert isinstance(body.pop("created"), int)
    assert body == {
        "data": [{"b64_json": base64.b64encode(i.data).decode()} for i in images],
        **tail,
    }
