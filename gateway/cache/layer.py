"""The cache in front of the image service: look up, coalesce, make, store.

    request -> key (job + output encoding + input image digests)
            -> in-process entry? -> shared (Redis) entry?          -> hit
            -> an identical request in flight here?                -> coalesced
            -> [Redis] another replica's flight for the key?       -> coalesced
            -> make it (the producer: fanout.FanOut), store if complete -> miss

Errors are never stored. A result with fewer images than asked (allowed partial) is handed
back but not stored. Redis trouble only ever means "use the in-process cache".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..config import CacheConfig
from ..errors import DomainError
from ..shape.fetch import Fetcher
from ..shape.media import decode_data_uri
from ..state.redis import RedisLink, SharedUnavailable
from ..types import Attempt, CacheResult, ImagesResult, Job, Output, ProducedImage
from .entry import Entry, entry_from_result
from .flights import Flights
from .key import CachePolicy, cache_key
from .local import LocalStore
from .shared import SharedStore

log = logging.getLogger("gateway.cache")

# How often a replica checks on another replica's flight: starts quick, backs off.
_POLL_FIRST = 0.05
_POLL_MAX = 0.5


class Producer(Protocol):
    """What the cache needs of whatever makes the images (fanout.FanOut)."""

    async def make(self, job: Job, output: Output, *, allow_partial: bool) -> ImagesResult:
        """All of the job's images, or (only if allowed) the ones that could be made."""
        ...

    async def shape(self, link: str, output: Output) -> ProducedImage:
        """One upstream image link in the form an answer needs."""
        ...

    def calls_for(self, job: Job) -> int:
        """Upstream calls the job takes: what a stored answer saves."""
        ...


@dataclass(frozen=True)
class _Made:
    """What a flight hands its waiters: the entry, how the flight got it, and the upstream
    attempts it made."""

    entry: Entry
    how: CacheResult  # miss (made it), hit (found it), coalesced (another replica made it)
    attempts: list[Attempt] = field(default_factory=list)
    consumed: list[str] = field(default_factory=list)  # the providers' own charges for it


class ImageCache:
    """Runs image jobs through the cache, shared through `redis` when given. `on_evict(reason)`
    is told of each eviction (for metrics)."""

    def __init__(
        self,
        config: CacheConfig,
        producer: Producer,
        fetcher: Fetcher,
        *,
        deadline_seconds: float,
        on_evict: Callable[[str], None] = lambda reason: None,
        redis: RedisLink | None = None,
    ) -> None:
        self.config = config
        self._producer = producer
        self._fetcher = fetcher
        self._deadline = deadline_seconds
        self.enabled = config.enabled and config.ttl_seconds > 0 and config.max_entries > 0
        self._local = LocalStore(
            max_bytes=config.max_bytes,
            max_entries=config.max_entries,
            ttl=config.ttl_seconds,
            url_ttl=config.url_ttl_seconds,
            on_evict=on_evict,
        )
        self._flights: Flights[_Made] = Flights()
        self._shared: SharedStore | None = None
        if self.enabled and redis is not None:
            self._shared = SharedStore(redis)

    @property
    def nbytes(self) -> int:
        """Image bytes held in this process."""
        return self._local.nbytes

    @property
    def entries(self) -> int:
        """Entries held in this process."""
        return len(self._local)

    # ------------------------------------------------------------------ the request path

    async def make(
        self, job: Job, output: Output, *, allow_partial: bool, policy: CachePolicy
    ) -> ImagesResult:
        """The images for job, from the cache when allowed; result.cache says how."""
        if not self.enabled:
            result = await self._producer.make(job, output, allow_partial=allow_partial)
            result.cache = "off"
            return result
        key = await self._key(job, output) if policy.store else None
        if key is None:
            result = await self._producer.make(job, output, allow_partial=allow_partial)
            result.cache = "bypass"
            return result

        if policy.lookup:
            hit = await self._hit(key, output)
            if hit is not None:
                return hit
            lead = self._lead if self._shared is not None else self._produce
            made, joined = await self._flights.run(
                (key, allow_partial),
                lambda: lead(key, job, output, allow_partial),
                # A stream's caller may hang up: its flight must outlive it for the others.
                detached=output.stream,
            )
            how = "coalesced" if joined else made.how
        else:
            # no-cache: a fresh picture, not anyone else's; it still refreshes the entry.
            made = await self._produce(key, job, output, allow_partial)
            how = "miss"
        # Just made (or just checked as servable): its links are fresh whatever url_ttl
        # says, so every image has a link or bytes and the entry always serves.
        served = await self._serve(made.entry, output, links_fresh=True)
        assert served is not None
        served.cache = how
        if how in ("hit", "coalesced"):
            served.calls_saved = made.entry.calls
        else:
            served.attempts = made.attempts  # this request's own flight made them
            served.consumed = made.consumed
        return served

    async def stored(self, job: Job, output: Output, policy: CachePolicy) -> ImagesResult | None:
        """A stored answer for job, without making anything: None when there is none.
        For callers out of quota, whom a stored (free) answer can still serve."""
        if not (self.enabled and policy.lookup):
            return None
        key = await self._key(job, output)
        return await self._hit(key, output) if key is not None else None

    async def _hit(self, key: str, output: Output) -> ImagesResult | None:
        """The stored entry for key shaped for this caller and counted as a hit; None when
        there is none (or its links aged out with no bytes held)."""
        found = await self._lookup(key)
        served = await self._serve(found, output) if found is not None else None
        if found is None or served is None:
            return None
        served.cache, served.calls_saved = "hit", found.calls
        return served

    # ------------------------------------------------------------------ keys

    async def _key(self, job: Job, output: Output) -> str | None:
        """The cache key; None when an input image (or the mask) cannot be read (then the
        request goes uncached rather than risk serving a picture made from other bytes)."""
        digests: list[str] = []
        for image in job.images:
            digest = await self._digest(image)
            if digest is None:
                return None
            digests.append(digest)
        mask = output.composite.mask if output.composite is not None else None
        mask_digest = await self._digest(mask) if mask is not None else None
        if mask is not None and mask_digest is None:
            return None
        return cache_key(job, output, digests, mask_digest)

    async def _digest(self, image: str) -> str | None:
        if image.startswith("data:"):
            try:
                decoded = decode_data_uri(image)
            except ValueError:
                return None
            if decoded is None:
                return None
            data = decoded[0]
        else:
            # A link's content may change behind the same URL: the key needs the bytes.
            try:
                data, _info = await self._fetcher.get(image, decode=False)
            except DomainError:
                return None
        if len(data) > 1 << 20:
            return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        return hashlib.sha256(data).hexdigest()

    # ------------------------------------------------------------------ lookups

    async def _lookup(self, key: str) -> Entry | None:
        entry = self._local.get(key)
        if entry is not None or self._shared is None:
            return entry
        try:
            entry = await self._shared.get(key)
        except SharedUnavailable:
            return None
        if entry is not None and self._servable(entry):
            self._local.put(key, entry)  # next time without a round trip
            return entry
        return None

    def _servable(self, entry: Entry) -> bool:
        expires = entry.expires_at(self.config.ttl_seconds, self.config.url_ttl_seconds)
        return time.time() < expires

    async def _serve(
        self, entry: Entry, output: Output, *, links_fresh: bool = False
    ) -> ImagesResult | None:
        """The entry shaped for this caller; None when it cannot be (a link aged out and
        no bytes are held)."""
        now = time.time()
        fresh = links_fresh or entry.link_fresh(now, self.config.url_ttl_seconds)
        wants_bytes = output.wants_bytes
        images: list[ProducedImage] = []
        for img in entry.images:
            link = img.url if fresh else None
            if img.data is not None and (wants_bytes or link is None):
                images.append(
                    ProducedImage(
                        url=link,
                        data=img.data,
                        mime=img.mime,
                        size=img.size,
                        size_source=img.size_source,
                    )
                )
            elif link is not None and not wants_bytes:
                images.append(ProducedImage(url=link, size=img.size, size_source=img.size_source))
            elif link is not None:
                images.append(await self._producer.shape(link, output))
            else:
                return None
        return ImagesResult(
            images=images,
            upstreams=list(entry.upstreams),
            task_ids=list(entry.task_ids),
            trace_ids=list(entry.trace_ids),
            age=max(0, int(now - entry.created)),
        )

    # ------------------------------------------------------------------ making

    async def _lead(self, key: str, job: Job, output: Output, allow_partial: bool) -> _Made:
        """This replica's flight for key: wait for another replica's flight, or make it."""
        shared = self._shared
        if shared is None or not shared.available:
            return await self._produce(key, job, output, allow_partial)
        lock_key = f"{key}:{int(allow_partial)}"
        flight = secrets.token_hex(12)
        try:
            found = await self._wait_or_lock(key, lock_key, flight)
        except SharedUnavailable:
            return await self._produce(key, job, output, allow_partial)
        if found is not None:
            return found
        try:
            made = await self._produce(key, job, output, allow_partial)
        except DomainError as err:
            await self._quietly(shared.finish(lock_key, flight, err))
            raise
        except BaseException:
            # Cancelled (every caller left) or a bug: free the lock for the next replica.
            await asyncio.shield(self._quietly(shared.release(lock_key, flight)))
            raise
        await self._quietly(shared.finish(lock_key, flight, None))
        return made

    async def _wait_or_lock(self, key: str, lock_key: str, flight: str) -> _Made | None:
        """An entry another replica made (or had), or None once this flight holds the lock.
        Gives up waiting at the deadline and makes the images itself: never a hang."""
        shared = self._shared
        assert shared is not None
        deadline = time.monotonic() + self._deadline
        waited = False
        while time.monotonic() < deadline:
            entry = await shared.get(key)
            if entry is not None and self._servable(entry):
                self._local.put(key, entry)
                return _Made(entry, "coalesced" if waited else "hit")
            holder = await shared.acquire(lock_key, flight, self._deadline + 30)
            if holder is None:
                return None
            waited = True
            ended = await self._wait_for(lock_key, holder, deadline)
            if isinstance(ended, DomainError):
                raise ended
            # Ended well (the entry should be there now) or its holder vanished: look again.
        return None

    async def _wait_for(self, lock_key: str, holder: str, deadline: float) -> DomainError | bool:
        shared = self._shared
        assert shared is not None
        pause = _POLL_FIRST
        while time.monotonic() < deadline:
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, _POLL_MAX)
            outcome = await shared.outcome(holder)
            if outcome is not False:
                return outcome
            if await shared.holder(lock_key) != holder:
                # Released (or expired) since: the outcome is written first, so read it
                # once more; nothing there means the holder died or was cancelled.
                return await shared.outcome(holder)
        return False

    async def _produce(self, key: str, job: Job, output: Output, allow_partial: bool) -> _Made:
        result = await self._producer.make(job, output, allow_partial=allow_partial)
        entry = entry_from_result(result, created=time.time(), calls=self._producer.calls_for(job))
        if len(result.images) == job.count:
            self._local.put(key, entry)
            if self._shared is not None and entry.nbytes <= self.config.max_bytes:
                expires = entry.expires_at(self.config.ttl_seconds, self.config.url_ttl_seconds)
                await self._quietly(self._shared.put(key, entry, expires))
        return _Made(entry, "miss", result.attempts, result.consumed)

    @staticmethod
    async def _quietly(call: Awaitable[None]) -> None:
        """Redis writes are best effort: the caller has its images either way."""
        with contextlib.suppress(SharedUnavailable):
            await call
