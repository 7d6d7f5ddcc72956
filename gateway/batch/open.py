"""Which store the Batch API keeps its state in, from the configuration."""

from __future__ import annotations

from ..config import Config
from ..state.daybook import open_state_dir
from .store import BatchStore


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
