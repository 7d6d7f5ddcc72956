"""The batch runner: in the background of every replica, takes batches from the store and
brings each to its end, one claim at a time.

    validating   the input file read chunk by chunk (batch/jsonl.py); its lines stored, or
                 the batch failed naming the lines at fault
    in_progress  pending lines run through the pipeline (api/batch_lines.py), at most
                 [batch] concurrency at once over every batch of this replica, and only
                 while the pool keeps [batch] interactive_headroom call slots free
    finalizing   the output and error files written from the stored outcomes
    completed | cancelled | expired

Nothing is lost and nothing is paid for twice: a line's outcome is stored once, the moment
its answer is known, and only lines with no outcome are ever run. A replica that stops
(SIGTERM) starts no new line, lets the running ones finish within the shutdown grace and
gives its claims back; one that dies leaves claims that lapse after [batch] claim_seconds,
and whichever replica claims the batch next goes on from its pending lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from ..config.state import BatchConfig
from ..shutdown import Shutdown
from .jsonl import InputCheck
from .metrics import BatchMetrics
from .outputs import finish
from .store import BatchError, BatchRecord, BatchStore, Line, Outcome, Update

log = logging.getLogger("gateway.batch")


@dataclass(frozen=True)
class Retry:
    """Not an outcome: run the line again after `seconds`. `counts` says whether this try
    counts towards the line's limit of tries (a rate refusal does not: it only waits)."""

    seconds: float
    counts: bool
    last: Outcome  # what to write if the tries run out
    stop: bool = False  # the gateway is going away: leave the line pending, do not wait


RunLine = Callable[[BatchRecord, Line], Awaitable[Outcome | Retry]]
MAX_TRIES = 4  # tries of a line that failed for want of capacity, before its error is written
_ADD_EVERY = 500  # lines stored per write while validating
_LOOK_SECONDS = 0.5  # how long a batch with every line running waits before reading again
_COUNT_SECONDS = 5.0  # how often the batches-by-status gauge is refreshed


class BatchRunner:
    """See the module's doc. `capacity` tells the upstream call slots of the usable tokens
    and the calls in flight on them (Pool.capacity); `clock` is wall time in seconds
    (expiry)."""

    def __init__(
        self,
        store: BatchStore,
        run_line: RunLine,
        config: BatchConfig,
        metrics: BatchMetrics,
        *,
        shutdown: Shutdown,
        capacity: Callable[[], tuple[int, int]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._store = store
        self._run_line = run_line
        self._config = config
        self._metrics = metrics
        self._shutdown = shutdown
        self._capacity = capacity
        self._clock = clock
        self._poll = min(1.0, config.claim_seconds / 4)
        self._slots = config.concurrency  # line slots free now, over every batch
        self._owned: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._closed = False
        self._main: asyncio.Task[None] | None = None

    @property
    def stopping(self) -> bool:
        return self._closed or self._shutdown.begun

    def start(self) -> None:
        self._wake = asyncio.Event()  # on the serving loop
        self._main = asyncio.create_task(self._claiming(), name="batch-runner")

    def wake(self) -> None:
        """A batch was created or cancelled: look now rather than at the next poll."""
        self._wake.set()

    async def aclose(self) -> None:
        """Start no line; wait for the running ones (the shutdown's cutoff cancels what is
        left); give the claims back."""
        self._closed = True
        self._wake.set()
        tasks = [t for t in (self._main, *self._owned.values()) if t is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # Claiming -----------------------------------------------------------------------------
    async def _claiming(self) -> None:
        counted_at = 0.0
        while not self.stopping:
            try:
                if len(self._owned) < self._config.concurrency:
                    record = await self._store.claim_batch(
                        self.id, lease_seconds=self._config.claim_seconds
                    )
                    if record is not None and not self.stopping:
                        self._own(record)
                        continue
                if time.monotonic() >= counted_at:
                    counted_at = time.monotonic() + _COUNT_SECONDS
                    self._metrics.set_statuses(await self._store.status_counts())
            except Exception as exc:  # the store is away: try again at the next poll
                log.warning("batch runner: the store failed (%s); retrying", type(exc).__name__)
            await self._nap(self._poll)

    async def _nap(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()

    def _own(self, record: BatchRecord) -> None:
        task = asyncio.create_task(self._work(record), name=f"batch-{record.id}")
        self._owned[record.id] = task
        self._metrics.running.set(len(self._owned))

        def done(_: asyncio.Task[None]) -> None:
            self._owned.pop(record.id, None)
            self._metrics.running.set(len(self._owned))
            self._wake.set()  # a place is free: claim the next batch

        task.add_done_callback(done)

    async def _work(self, record: BatchRecord) -> None:
        lost = asyncio.Event()
        renewing = asyncio.create_task(self._renew(record.id, lost))
        release = True
        try:
            await self._advance(record, lost)
        except Exception:
            # Keep the claim until it lapses: the batch is tried again then, not at once.
            release = False
            log.exception("batch %s: stopped by an unexpected error; retried later", record.id)
        finally:
            renewing.cancel()
            if release and not lost.is_set():
                try:
                    await self._store.release_claim(record.id, self.id)
                except Exception:
                    log.warning("batch %s: the claim could not be given back", record.id)

    async def _renew(self, batch_id: str, lost: asyncio.Event) -> None:
        every = self._config.claim_seconds / 3
        while True:
            await asyncio.sleep(every)
            try:
                kept = await self._store.renew_claim(
                    batch_id, self.id, lease_seconds=self._config.claim_seconds
                )
            except Exception:
                continue  # the store is away; the claim may lapse, which renew then says
            if not kept:
                log.warning("batch %s: taken over by another replica", batch_id)
                lost.set()
                return

    # A batch's course ---------------------------------------------------------------------
    async def _advance(self, record: BatchRecord, lost: asyncio.Event) -> None:
        current: BatchRecord | None = record
        if current is not None and current.status == "validating":
            current = await self._validate(current)
        if current is not None and current.status == "in_progress":
            current = await self._run(current, lost)
        if current is None or self.stopping or lost.is_set():
            return
        if current.status == "in_progress" and self._clock() >= current.expires_at:
            await finish(self._store, current, "expired", self._clock, self._metrics)
        elif current.status == "finalizing":
            await finish(self._store, current, "completed", self._clock, self._metrics)
        elif current.status == "cancelling":
            await finish(self._store, current, "cancelled", self._clock, self._metrics)

    async def _validate(self, record: BatchRecord) -> BatchRecord | None:
        cfg = self._config
        check = InputCheck(
            record.endpoint, max_lines=cfg.max_lines, max_line_bytes=cfg.max_line_bytes
        )
        lines: list[Line] = []
        try:
            async for chunk in self._store.read_file(record.input_file_id):
                lines += check.feed(chunk)
                if len(lines) >= _ADD_EVERY:
                    await self._store.add_lines(record.id, lines)
                    lines = []
                if self.stopping:
                    return None  # validated again from the start by whoever goes on
        except FileNotFoundError:
            message = f"The input file {record.input_file_id} was deleted before it was read."
            return await self._fail(record, (BatchError("file_not_found", message),))
        lines += check.end()
        if check.failed:
            return await self._fail(record, tuple(check.errors))
        if lines:
            await self._store.add_lines(record.id, lines)
        update = Update(
            status="in_progress",
            from_status=("validating",),
            total=check.requests,
            times={"in_progress_at": int(self._clock())},
        )
        return await self._moved(record.id, update)

    async def _fail(
        self, record: BatchRecord, errors: tuple[BatchError, ...]
    ) -> BatchRecord | None:
        update = Update(
            status="failed",
            from_status=("validating",),
            errors=errors,
            times={"failed_at": int(self._clock())},
        )
        moved = await self._store.update_batch(record.id, update)
        if moved is not None:
            self._metrics.batches.labels("failed").inc()
            await self._store.drop_lines(record.id)  # those stored before a bad one
            return moved
        return await self._store.get_batch(record.id)

    async def _moved(self, batch_id: str, update: Update) -> BatchRecord | None:
        """The batch after `update`; as it is now if its status had moved meanwhile (a
        cancel)."""
        moved = await self._store.update_batch(batch_id, update)
        return moved if moved is not None else await self._store.get_batch(batch_id)

    async def _run(self, record: BatchRecord, lost: asyncio.Event) -> BatchRecord | None:
        """Run the pending lines; the batch once none is left (finalizing), or when it was
        cancelled or expired; None when this replica stops or lost the claim."""
        running: set[asyncio.Task[None]] = set()
        after = 0
        try:
            while not (self.stopping or lost.is_set()):
                # Read again each round: a cancel (from any replica) is seen at once.
                current = await self._store.get_batch(record.id)
                if current is None or current.status != "in_progress":
                    return current
                if self._clock() >= current.expires_at:
                    return current
                limit = self._config.concurrency * 2
                lines = await self._store.pending_lines(record.id, limit=limit, after=after)
                if lines:
                    after = await self._start_lines(current, lines, lost, running, after)
                elif running:
                    await asyncio.wait(running, timeout=_LOOK_SECONDS)
                elif after:
                    after = 0  # once more from the top: lines left pending by a stop
                else:
                    update = Update(
                        status="finalizing",
                        from_status=("in_progress",),
                        times={"finalizing_at": int(self._clock())},
                    )
                    return await self._moved(record.id, update)
            return None
        finally:
            if running:
                # Running lines end by themselves (or at the shutdown's cutoff).
                await asyncio.gather(*running, return_exceptions=True)

    async def _start_lines(
        self,
        batch: BatchRecord,
        lines: list[Line],
        lost: asyncio.Event,
        running: set[asyncio.Task[None]],
        after: int,
    ) -> int:
        """Start lines as slots free up; the index of the last one started."""
        for line in lines:
            slot = await self._slot(lost)
            if slot == "stop":
                break
            if slot == "waited":
                # The batch was read before this round; a cancel (from any replica) while
                # this line waited for its slot stops the batch before the line.
                fresh = await self._store.get_batch(batch.id)
                if fresh is None or fresh.status != "in_progress":
                    self._slots += 1
                    break
            task = self._start_line(batch, line)
            running.add(task)
            task.add_done_callback(running.discard)
            after = line.index
        return after

    async def _slot(self, lost: asyncio.Event) -> Literal["free", "waited", "stop"]:
        """Take a line slot while the pool keeps the interactive headroom free: at once
        ("free"), after waiting for one ("waited"), or none ("stop": stopping, or the
        claim is lost)."""
        waited = False
        while True:
            if self.stopping or lost.is_set():
                return "stop"
            if self._slots > 0 and self._room() > 0:
                self._slots -= 1
                return "waited" if waited else "free"
            waited = True
            await asyncio.sleep(0.05)

    def _room(self) -> int:
        """Upstream call slots free for a batch line, the interactive headroom kept. A line
        just started may not have reached the pool yet, so the calls in flight are at least
        this replica's running lines (the pool's count holds those that have, and every
        interactive call)."""
        slots, busy = self._capacity()
        running = self._config.concurrency - self._slots
        # Never the whole capacity kept back: with fewer slots than the headroom, a batch
        # still runs one line when nothing else is.
        kept = min(self._config.interactive_headroom, slots - 1)
        return slots - max(busy, running) - kept

    def _start_line(self, batch: BatchRecord, line: Line) -> asyncio.Task[None]:
        task = asyncio.create_task(self._line(batch, line))
        self._shutdown.track(task)  # cancelled at the cutoff: the line stays pending
        task.add_done_callback(self._shutdown.untrack)
        return task

    async def _line(self, batch: BatchRecord, line: Line) -> None:
        self._metrics.lines_in_flight.inc()
        try:
            outcome = await self._outcome(batch, line)
            if outcome is not None and await self._store.finish_line(batch.id, outcome):
                self._metrics.lines.labels("ok" if outcome.ok else "failed").inc()
        except Exception:
            log.exception(
                "batch %s line %d: left pending after an unexpected error", batch.id, line.index
            )
        finally:
            self._slots += 1
            self._metrics.lines_in_flight.dec()

    async def _outcome(self, batch: BatchRecord, line: Line) -> Outcome | None:
        """The line's outcome; None to leave it pending (this replica is stopping)."""
        tries = 0
        while True:
            got = await self._run_line(batch, line)
            if not isinstance(got, Retry):
                return got
            if got.stop or self.stopping:
                return None
            tries += got.counts
            if tries >= MAX_TRIES:
                return got.last
            await asyncio.sleep(min(30.0, got.seconds * (2 ** max(0, tries - 1))))
