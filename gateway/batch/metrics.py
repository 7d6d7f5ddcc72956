"""The batch runner's Prometheus metrics, on the gateway's registry."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from .store import STATUSES


class BatchMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.lines_in_flight = Gauge(
            "nano_banana_batch_lines_in_flight",
            "batch lines running on this replica now",
            registry=registry,
        )
        self.lines = Counter(
            "nano_banana_batch_lines",
            "batch lines finished on this replica, by outcome (ok | failed)",
            ["outcome"],
            registry=registry,
        )
        self.batches = Counter(
            "nano_banana_batches",
            "batches that reached an end on this replica, by status",
            ["status"],
            registry=registry,
        )
        self.running = Gauge(
            "nano_banana_batches_running",
            "batches this replica holds the claim of now",
            registry=registry,
        )
        self.statuses = Gauge(
            "nano_banana_batches_by_status",
            "batches in the store by status, every replica's (read every few seconds)",
            ["status"],
            registry=registry,
        )

    def set_statuses(self, counts: Mapping[str, int]) -> None:
        for status in STATUSES:
            self.statuses.labels(status).set(counts.get(status, 0))
