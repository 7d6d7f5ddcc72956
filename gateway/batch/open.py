"""Which store the Batch API keeps its state in, from the configuration; and keeping it
open when it is a server that may not be up yet.

A PostgreSQL that cannot be reached at start must not keep the gateway from serving
images: the keeper logs it, tries again every few seconds, and the Batch API answers 503
until it is in. A state directory that cannot be used is a configuration error, as for
the day book: the start fails naming the setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator

from ..config import Config
from ..errors import StoreUnavailable
from ..state.daybook import open_state_dir
from .store import BatchStore

log = logging.getLogger("gateway.batch")

RETRY_SECONDS = 5.0


def open_store(config: Config) -> BatchStore | None:
    """PostgreSQL when [state] database_url is set (replicas share it), else SQLite in the
    state directory; None when state is memory only ([state] dir = ""): the Batch API is
    then off, since a batch must outlive the process. Not started: call start()."""
    if config.state.database_url:
        from .postgres import PostgresBatchStore  # asyncpg is loaded only when used

        return PostgresBatchStore(config.state.database_url)
    directory = open_state_dir(config.state.dir)
    if directory is None:
        return None
    from .sqlite import SQLiteBatchStore

    return SQLiteBatchStore(directory)


class StoreKeeper:
    """Starts the store; for a server (`remote`), keeps trying until it answers, then
    calls `on_ready` (the runner starts there)."""

    def __init__(self, store: BatchStore, *, remote: bool, retry_seconds: float = RETRY_SECONDS):
        self.store = store
        self.ready = False
        self._remote = remote
        self._retry_seconds = retry_seconds
        self._task: asyncio.Task[None] | None = None

    async def start(self, on_ready: Callable[[], None]) -> None:
        try:
            await self.store.start()
        except Exception as exc:
            if not self._remote:
                raise
            log.error("Batch API unavailable until its store answers: %s", exc)
            self._task = asyncio.create_task(self._retry(on_ready), name="batch-store-open")
            return
        self.ready = True
        on_ready()

    async def _retry(self, on_ready: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(self._retry_seconds)
            try:
                await self.store.start()
            except Exception as exc:
                log.warning("batch store still unavailable: %s", exc)
                continue
            log.info("batch store reached: the Batch API is on")
            self.ready = True
            on_ready()
            return

    def available(self) -> BatchStore:
        """The store, or StoreUnavailable (a 503) while it has not been reached."""
        if not self.ready:
            raise StoreUnavailable()
        return self.store

    @contextlib.contextmanager
    def reached(self) -> Iterator[None]:
        """Store calls inside: an outage of the store (its down_errors) comes out as
        StoreUnavailable, not as a driver's exception."""
        try:
            yield
        except self.store.down_errors as exc:
            log.warning("batch store unavailable: %s", type(exc).__name__)
            raise StoreUnavailable() from None

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.ready:
            await self.store.aclose()
