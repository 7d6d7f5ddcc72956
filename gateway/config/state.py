"""[redis] and [state]: where state that outlives a request lives.

[redis] is what several replicas share: the cache, the per-client limits and the pool's
token health. [state] is what one process keeps on disk: the day's per-client counts when
there is no Redis, and the durable work of later features. Both are optional: without
them a replica keeps everything in memory and in its state directory.
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from .fields import DatabaseURL, Number, RedisURL, Section, Text, WholeNumber, setting

# Where the state directory is when neither the config nor GATEWAY_STATE_DIR names one:
# the XDG base directory for state, per user (see load.py).
STATE_SUBDIR = "nano-banana-gateway"

WhenDown = Literal["local", "refuse"]


class RedisConfig(Section):
    """State shared by every replica pointed at one Redis."""

    url: RedisURL | None = setting(
        None,
        "cache, limits and token health shared by every replica (or GATEWAY_REDIS_URL)",
        example="redis://redis:6379/0",
        secret=True,
    )
    prefix: Text = setting("nbg:", "prefix of the gateway's Redis keys (empty: the default)")
    timeout_seconds: Number = setting(0.5, 'per Redis call; slower counts as "Redis down"', ge=0.01)
    lease_seconds: Number = setting(
        30.0,
        "a request's hold on max_concurrent_requests, renewed while it runs: a dead "
        "replica's holds come back after this long",
        ge=1,
    )
    sync_seconds: Number = setting(
        1.0, "how often a replica reads the token health and usage the others wrote", ge=0.05
    )
    daily_limits_when_down: WhenDown = setting(
        "local",
        "Redis unreachable: enforce images_per_day / budget_usd_per_day on what this "
        "replica knows, or refuse (503) requests of clients that have them",
    )

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return value or str(cls.model_fields["prefix"].default)


class StateConfig(Section):
    """What one process keeps on disk."""

    dir: Text = setting(
        "",
        "the state directory (or GATEWAY_STATE_DIR; default $XDG_STATE_HOME/"
        'nano-banana-gateway or ~/.local/state/nano-banana-gateway); "" keeps state in '
        "memory only",
        example="/var/lib/nano-banana-gateway",
        active=False,
    )
    database_url: DatabaseURL | None = setting(
        None,
        "the Batch API's files, batches and lines in PostgreSQL, shared by every replica "
        "(or GATEWAY_DATABASE_URL); unset: SQLite in the state directory",
        example="postgresql://gateway:PASSWORD@postgres:5432/gateway",
        secret=True,
    )


class BatchConfig(Section):
    """The Batch API (/v1/files, /v1/batches): bulk and long jobs run in the background."""

    concurrency: WholeNumber = setting(
        4, "batch lines in flight at once, per replica (interactive requests come first)", ge=1
    )
    interactive_headroom: WholeNumber = setting(
        8,
        "a batch line starts only while at least this many upstream call slots are free "
        "for interactive requests",
        ge=0,
    )
    max_file_bytes: WholeNumber = setting(
        200 * 1024 * 1024, "largest input file accepted by POST /v1/files", ge=1
    )
    max_lines: WholeNumber = setting(50_000, "most request lines in one batch input file", ge=1)
    max_line_bytes: WholeNumber = setting(
        20 * 1024 * 1024, "longest single line of an input file (an edit's data URIs count)", ge=1
    )
    claim_seconds: Number = setting(
        30.0,
        "a replica's hold on the batch it runs, renewed while it works: a dead replica's "
        "batch is taken over after this long",
        ge=1,
    )
