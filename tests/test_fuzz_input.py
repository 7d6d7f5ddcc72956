"""Whatever a caller sends, the parsing and translation layer answers with a GatewayError
(an OpenAI-shaped 4xx) or a valid job: never another exception, which would be a 500."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.api.parse import parse_edit_json, parse_generation
from gateway.config import DEFAULT_ALIASES
from gateway.errors import GatewayError
from gateway.translate import build_job

FIELDS = [
    "prompt",
    "model",
    "n",
    "size",
    "quality",
    "response_format",
    "output_format",
    "output_compression",
    "background",
    "stream",
    "partial_images",
    "user",
    "style",
    "mask",
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.sampled_from(
        [
            "1024x1024",
            "1536x1024",
            "auto",
            "b64_json",
            "url",
            "jpeg",
            "nano-banana-pro",
            "gpt-image-1",
            "dall-e-2",
            "transparent",
            "0x0",
            "99999x1",
        ]
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
bodies = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), json_values, max_size=8)


def _translate(parse, body) -> None:
    try:
        req = parse(body)
        job, output = build_job(req, default_model="nano-banana", aliases=DEFAULT_ALIASES)
    except GatewayError as err:
        assert 400 <= err.status < 500
        assert err.body()["error"]["message"]
        return
    assert 1 <= job.count <= 10
    assert job.prompt.strip()
    assert output.response_format in ("url", "b64_json")


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_generation_bodies_never_crash(body):
    _translate(parse_generation, body)


@settings(max_examples=300, deadline=None)
@given(
    bodies,
    st.lists(
        st.dictionaries(st.sampled_from(["image_url", "file_id", "x"]), json_values, max_size=2),
        max_size=3,
    )
    | json_values,
)
def test_edit_json_bodies_never_crash(body, images):
    _translate(parse_edit_json, {**body, "images": images})
