"""Upstream providers, each behind the `Upstream` interface; `build_upstream` picks one."""

from __future__ import annotations

from ..config import UpstreamConfig
from ..http import connection_limit, open_file_limit
from .acedata import AceDataUpstream
from .base import FailureKind, Upstream, UpstreamError, UpstreamResult
from .defapi import DefApiUpstream
from .forms import Field
from .mock import MockUpstream

__all__ = ["FailureKind", "Upstream", "UpstreamError", "UpstreamResult", "build_upstream"]


def fields(cfg: UpstreamConfig) -> tuple[Field, ...]:
    """The configured extra fields of an upstream, as Fields."""
    return tuple(Field(name) for name in cfg.fields)


def build_upstream(cfg: UpstreamConfig) -> Upstream:
    """The Upstream implementation for one configured upstream."""
    if cfg.type in ("acedata", "xhuoapi"):
        return AceDataUpstream(
            cfg.name,
            cfg.type,
            cfg.base_url,
            timeout=cfg.timeout_seconds,
            models=cfg.models,
            fields=fields(cfg),
            max_connections=connection_limit(cfg.max_connections, open_file_limit()),
        )
    if cfg.type == "defapi":
        return DefApiUpstream(
            cfg.name,
            cfg.base_url,
            timeout=cfg.timeout_seconds,
            models=cfg.models,
            poll_interval=cfg.poll_interval_seconds,
            poll_max_interval=cfg.poll_max_interval_seconds,
            poll_deadline=cfg.poll_deadline_seconds,
            not_found_grace=cfg.not_found_grace_seconds,
            fields=fields(cfg),
            max_connections=connection_limit(cfg.max_connections, open_file_limit()),
        )
    if cfg.type == "mock":
        return MockUpstream(cfg.name, latency=cfg.mock_latency_seconds)
    raise ValueError(f"unknown upstream type {cfg.type!r}")
