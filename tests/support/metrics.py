"""Reading /metrics in tests: every sample by name and labels."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import RunningGateway

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a /metrics answer, keyed by name and labels (no *_created)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def of(found: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples of one metric name, by their label set."""
    return {labels: value for (n, labels), value in found.items() if n == name}


def labels(**kv: str) -> frozenset[tuple[str, str]]:
    return frozenset(kv.items())


def settled_metrics(gw: RunningGateway) -> Samples:
    """/metrics once no request is in flight (a stream is metered as its last byte goes)."""
    deadline = time.monotonic() + 30
    while True:
        found = samples(gw.metrics())
        if found[("nano_banana_inflight_requests", frozenset())] == 0:
            return found
        assert time.monotonic() < deadline, "a request stayed in flight"
        time.sleep(0.05)
