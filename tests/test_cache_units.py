"""The cache's pure parts and in-process pieces: keys, policies, the entry wire format,
the byte-bounded store and single-flight coalescing."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from gateway.api.errors import openai_error
from gateway.api.headers import policy_for
from gateway.cache.entry import CachedImage, Entry, decode, encode
from gateway.cache.flights import Flights
from gateway.cache.key import CachePolicy, cache_key
from gateway.cache.local import LocalStore
from gateway.errors import NoCapacity
from gateway.types import Job, Output

BASE_JOB = Job("generate", "a red fox", "nano-banana-2", 1, (), "1:1", "1K")
BASE_OUT = Output("url")


def _key(job: Job = BASE_JOB, out: Output = BASE_OUT, digests: tuple[str, ...] = ()) -> str:
    return cache_key(job, out, list(digests))


# ------------------------------------------------------------------ keys


@pytest.mark.parametrize(
    ("job", "out", "digests"),
    [
        (Job("edit", "a red fox", "nano-banana-2", 1, (), "1:1", "1K"), BASE_OUT, ()),
        (Job("generate", "a red fox.", "nano-banana-2", 1, (), "1:1", "1K"), BASE_OUT, ()),
        (Job("generate", "a red fox", "nano-banana-pro", 1, (), "1:1", "1K"), BASE_OUT, ()),
        (Job("generate", "a red fox", "nano-banana-2", 2, (), "1:1", "1K"), BASE_OUT, ()),
        (Job("generate", "a red fox", "nano-banana-2", 1, (), "16:9", "1K"), BASE_OUT, ()),
        (Job("generate", "a red fox", "nano-banana-2", 1, (), "1:1", "2K"), BASE_OUT, ()),
        (Job("generate", "a red fox", "nano-banana-2", 1, (), None, None), BASE_OUT, ()),
        (BASE_JOB, Output("url", output_format="jpeg"), ()),
        (BASE_JOB, Output("url", output_format="jpeg", output_compression=50), ()),
        (BASE_JOB, BASE_OUT, ("aa",)),
    ],
)
def test_key_changes_with_anything_that_changes_the_picture(job, out, digests) -> None:
    assert _key(job, out, digests) != _key()


@pytest.mark.parametrize(
    "out",
    [
        Output("b64_json"),
        Output("url", stream=True),
        Output("url"),
        Output("url", expected_size=(1024, 1024)),
    ],
)
def test_key_ignores_how_the_images_are_handed_back(out) -> None:
    assert _key(out=out) == _key()


def test_key_depends_on_input_image_order_and_content() -> None:
    job = Job("edit", "merge", "nano-banana-2", 1, ("x", "y"))
    assert _key(job, digests=("a", "b")) != _key(job, digests=("b", "a"))
    assert _key(job, digests=("a", "b")) == _key(job, digests=("a", "b"))
    # The links themselves are not the key: their content is.
    other_links = Job("edit", "merge", "nano-banana-2", 1, ("p", "q"))
    assert _key(job, digests=("a", "b")) == _key(other_links, digests=("a", "b"))


# ------------------------------------------------------------------ policies


@pytest.mark.parametrize(
    ("headers", "client_allows", "mode"),
    [
        ({}, True, "use"),
        ({}, False, "bypass"),
        ({"cache-control": "no-cache"}, True, "refresh"),
        ({"cache-control": "No-Cache"}, True, "refresh"),
        ({"cache-control": "max-age=0"}, True, "refresh"),
        ({"cache-control": "max-age = 0"}, True, "refresh"),
        ({"cache-control": "max-age=60"}, True, "use"),
        ({"pragma": "no-cache"}, True, "refresh"),
        ({"cache-control": "no-store"}, True, "bypass"),
        ({"cache-control": "no-cache, no-store"}, True, "bypass"),
        ({"cache-control": "private, no-store"}, True, "bypass"),
        ({"cache-control": "no-cache"}, False, "bypass"),
        ({"cache-control": ""}, True, "use"),
    ],
)
def test_policy_from_headers(headers, client_allows, mode) -> None:
    policy = policy_for(headers, client_allows=client_allows)
    assert policy == CachePolicy(mode)
    assert policy.lookup is (mode == "use")
    assert policy.store is (mode != "bypass")


# ------------------------------------------------------------------ entries


def _entry(*images: CachedImage, created: float | None = None) -> Entry:
    return Entry(
        images=images,
        created=time.time() if created is None else created,
        upstreams=("ace",),
        task_ids=("t1",),
        trace_ids=("tr1",),
        calls=2,
    )


@pytest.mark.parametrize(
    "images",
    [
        (CachedImage("https://cdn/a.png", None, None, (1024, 1024)),),
        (CachedImage(None, b"\x89PNG-bytes", "image/png", (10, 20)),),
        (
            CachedImage("https://cdn/a.png", b"one", "image/png", None),
            CachedImage(None, b"", "image/jpeg", (1, 1)),
            CachedImage("https://cdn/c.png", None, None, None),
            CachedImage(None, bytes(range(256)) * 10, "image/webp", (3, 4)),
        ),
    ],
)
def test_entry_round_trips_through_its_wire_form(images) -> None:
    entry = _entry(*images)
    assert decode(encode(entry)) == entry


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"not an entry",
        b"NBG1",
        b"NBG1\x00\x00\x00\x05{bad}",
        b"NBG0" + encode(_entry(CachedImage(None, b"abc", "image/png", None)))[4:],
        encode(_entry(CachedImage(None, b"abc", "image/png", None)))[:-1],  # truncated
        encode(_entry(CachedImage(None, b"abc", "image/png", None))) + b"x",  # trailing
    ],
)
def test_malformed_wire_form_is_a_miss_not_an_error(blob) -> None:
    assert decode(blob) is None


def test_links_age_out_before_bytes() -> None:
    now = 1000.0
    with_bytes = _entry(CachedImage("u", b"x", "image/png", None), created=now)
    links_only = _entry(CachedImage("u", None, None, None), created=now)
    assert with_bytes.expires_at(ttl=3600, url_ttl=60) == now + 3600
    assert links_only.expires_at(ttl=3600, url_ttl=60) == now + 60
    assert links_only.expires_at(ttl=30, url_ttl=60) == now + 30
    assert links_only.link_fresh(now + 59, 60) and not links_only.link_fresh(now + 60, 60)


# ------------------------------------------------------------------ the local store


def _bytes_entry(size: int) -> Entry:
    return _entry(CachedImage(None, b"x" * size, "image/png", None))


def test_store_is_bounded_by_bytes_and_reports_evictions() -> None:
    evicted: list[str] = []
    store = LocalStore(
        max_bytes=10_000, max_entries=100, ttl=60, url_ttl=60, on_evict=evicted.append
    )
    for i in range(5):
        assert store.put(f"k{i}", _bytes_entry(3000))
    assert store.nbytes <= 10_000
    assert len(store) == 3
    assert evicted == ["size", "size"]
    assert store.get("k0") is None and store.get("k4") is not None


def test_store_is_bounded_by_entry_count() -> None:
    evicted: list[str] = []
    store = LocalStore(max_bytes=10**9, max_entries=2, ttl=60, url_ttl=60, on_evict=evicted.append)
    for i in range(4):
        store.put(f"k{i}", _bytes_entry(10))
    assert len(store) == 2 and evicted == ["size", "size"]


def test_store_refuses_an_entry_larger_than_itself() -> None:
    store = LocalStore(max_bytes=1000, max_entries=10, ttl=60, url_ttl=60)
    assert not store.put("big", _bytes_entry(5000))
    assert store.get("big") is None and store.nbytes == 0


def test_store_expires_entries_and_reports_it() -> None:
    evicted: list[str] = []
    store = LocalStore(
        max_bytes=10**6, max_entries=10, ttl=0.2, url_ttl=60, on_evict=evicted.append
    )
    store.put("k", _bytes_entry(10))
    assert store.get("k") is not None
    time.sleep(0.3)
    assert store.get("k") is None
    assert len(store) == 0 and evicted == ["expired"]


def test_store_keeps_links_only_for_url_ttl() -> None:
    store = LocalStore(max_bytes=10**6, max_entries=10, ttl=60, url_ttl=0.2)
    store.put("links", _entry(CachedImage("https://cdn/x.png", None, None, None)))
    store.put("bytes", _bytes_entry(10))
    time.sleep(0.3)
    assert store.get("links") is None
    assert store.get("bytes") is not None


def test_store_does_not_keep_an_already_expired_entry() -> None:
    store = LocalStore(max_bytes=10**6, max_entries=10, ttl=60, url_ttl=60)
    assert not store.put("old", Entry(images=(), created=0.0))
    assert store.get("old") is None


# ------------------------------------------------------------------ single flight


async def test_identical_work_runs_once_and_everyone_gets_it() -> None:
    flights: Flights[int] = Flights()
    runs = 0

    async def work() -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.05)
        return 42

    outcomes = await asyncio.gather(*(flights.run("k", work) for _ in range(20)))
    assert runs == 1
    assert [value for value, _ in outcomes] == [42] * 20
    assert sorted(joined for _, joined in outcomes) == [False] + [True] * 19
    assert len(flights) == 0


async def test_a_failure_reaches_every_waiter() -> None:
    flights: Flights[int] = Flights()

    async def work() -> int:
        await asyncio.sleep(0.02)
        raise NoCapacity("nothing left", retry_after=1, rate_limited=False)

    outcomes = await asyncio.gather(
        *(flights.run("k", work) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, NoCapacity) and openai_error(o).status == 503 for o in outcomes)
    assert len(flights) == 0  # the next request tries again


@pytest.mark.parametrize(("detached", "runs"), [(True, 1), (False, 2)])
async def test_the_first_caller_leaving_does_not_cancel_the_others(
    detached: bool, runs: int
) -> None:
    """Detached (a stream), the work outlives its leader; led in place, it starts again
    for those still waiting."""
    flights: Flights[int] = Flights()
    started = 0

    async def work() -> int:
        nonlocal started
        started += 1
        await asyncio.sleep(0.1)
        return 7

    leader = asyncio.ensure_future(flights.run("k", work, detached=detached))
    await asyncio.sleep(0.01)
    waiter = asyncio.ensure_future(flights.run("k", work, detached=detached))
    await asyncio.sleep(0.01)
    leader.cancel()
    assert await waiter == (7, True)
    assert started == runs
    assert len(flights) == 0


async def test_a_lone_leader_works_in_its_own_task() -> None:
    """No task per request when nobody else asks for the key."""
    flights: Flights[int] = Flights()
    seen: list[asyncio.Task[object] | None] = []

    async def work() -> int:
        seen.append(asyncio.current_task())
        return 3

    async def caller() -> tuple[int, bool]:
        outcome = await flights.run("k", work)
        seen.append(asyncio.current_task())
        return outcome

    assert await asyncio.ensure_future(caller()) == (3, False)
    assert seen[0] is seen[1]


async def test_a_leader_failing_after_its_waiters_left_is_quiet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flights: Flights[int] = Flights()

    async def work() -> int:
        await asyncio.sleep(0.05)
        raise NoCapacity("nothing left", retry_after=1, rate_limited=False)

    leader = asyncio.ensure_future(flights.run("k", work))
    await asyncio.sleep(0.01)
    waiter = asyncio.ensure_future(flights.run("k", work))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(NoCapacity):
        await leader
    del waiter
    gc.collect()
    assert "never retrieved" not in caplog.text
    assert len(flights) == 0


async def test_work_is_cancelled_when_every_caller_left() -> None:
    flights: Flights[int] = Flights()
    cancelled = asyncio.Event()

    async def work() -> int:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1

    callers = [asyncio.ensure_future(flights.run("k", work)) for _ in range(3)]
    await asyncio.sleep(0.01)
    for caller in callers:
        caller.cancel()
    await asyncio.wait_for(cancelled.wait(), 1)
    assert len(flights) == 0


async def test_different_keys_do_not_share() -> None:
    flights: Flights[str] = Flights()

    async def work_for(key: str) -> str:
        await asyncio.sleep(0.01)
        return key

    a, b = await asyncio.gather(
        flights.run("a", lambda: work_for("a")), flights.run("b", lambda: work_for("b"))
    )
    assert a == ("a", False) and b == ("b", False)
