"""The gateway's short-lived image hosting: bounded in bytes, explicit when it cannot host."""

from __future__ import annotations

import pytest

from gateway.api.errors import openai_error
from gateway.errors import DomainError
from gateway.shape.store import ImageStore


def test_store_keeps_images_and_evicts_by_bytes():
    store = ImageStore(max_bytes=100)
    first = store.put(b"a" * 60, "image/png")
    second = store.put(b"b" * 60, "image/jpeg")
    assert first.endswith(".png") and second.endswith(".jpg")
    assert store.get(second) == (b"b" * 60, "image/jpeg")
    assert store.get(first) is None, "the older image made room for the newer one"
    assert store.get("never-issued.png") is None


def test_store_refuses_an_image_larger_than_itself():
    store = ImageStore(max_bytes=100)
    with pytest.raises(DomainError) as info:
        store.put(b"x" * 101, "image/png")
    answer = openai_error(info.value)
    assert answer.status == 502 and answer.code == "image_too_large"


def test_store_entries_expire():
    store = ImageStore(ttl=0.01)
    name = store.put(b"png", "image/png")
    import time

    time.sleep(0.02)
    assert store.get(name) is None
