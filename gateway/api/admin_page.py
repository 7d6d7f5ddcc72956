"""GET /admin: the operator's page. The pool, the teams and the cache at a glance, as one
server-rendered HTML page: no external assets, no build step, no framework, a line of
script to refresh it.

It renders the same typed state as /admin/upstreams (the pool's view), /admin/clients
(the limiter's day) and the metrics (the cache's counters, read from the registry): one
source of truth, nothing computed twice. Everything shown is escaped; tokens appear only
by their redacted ids, and no key is ever in the page, its source included.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from ..admission.counters import ClientDay
from ..batch.store import BatchRecord
from ..config import ClientConfig
from ..pool import UpstreamView

# Colours of states, for people who look rather than read (the word is always there too).
_COLOURS = {
    "ok": "#1a7f37",
    "cooling": "#9a6700",
    "probing": "#9a6700",
    "benched": "#cf222e",
    "broken": "#cf222e",
    "panic": "#8250df",
    # A batch's statuses on its way (the page lists no finished batch).
    "in_progress": "#0969da",
    "finalizing": "#0969da",
    "cancelling": "#9a6700",
}
_REFRESH_SECONDS = 10

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1f2328;background:#fff}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0}
th,td{padding:.25em .7em;border-bottom:1px solid #d0d7de;text-align:left;vertical-align:top}
th{background:#f6f8fa}
.state{display:inline-block;padding:0 .5em;border-radius:.8em;color:#fff;font-weight:600}
.bar{display:inline-block;width:9em;height:.8em;background:#eaeef2;border-radius:.4em;
overflow:hidden;vertical-align:middle;margin-right:.4em}
.bar span{display:block;height:100%;background:#0969da}
.bar span.full{background:#cf222e}
.err{color:#57606a;font-size:.9em;max-width:36em;overflow-wrap:anywhere}
.muted{color:#57606a}
"""


@dataclass(frozen=True)
class CacheStats:
    """The cache's counters as the metrics have them."""

    hits: float
    misses: float
    coalesced: float
    calls_saved: float
    cost_saved: float
    bytes: float
    entries: float
    redis_up: bool | None  # None: no Redis configured

    @property
    def hit_ratio(self) -> float | None:
        answered = self.hits + self.coalesced + self.misses
        return None if not answered else (self.hits + self.coalesced) / answered


_CACHE_SAMPLES = frozenset(
    {
        "nano_banana_cache_requests_total",
        "nano_banana_cache_upstream_calls_saved_total",
        "nano_banana_cost_saved_usd_total",
        "nano_banana_cache_bytes",
        "nano_banana_cache_entries",
        "nano_banana_redis_up",
    }
)


def cache_stats(registry: CollectorRegistry) -> CacheStats:
    """The cache's figures, read from the same registry /metrics serves, in one pass over
    it (each lookup by name would run every collector again)."""
    found = [
        (s.name, s.labels, s.value)
        for family in registry.collect()
        for s in family.samples
        if s.name in _CACHE_SAMPLES
    ]

    def value(name: str, **labels: str) -> float:
        """The sum over the samples of `name` that carry `labels` (all of them: none)."""
        return sum(v for n, have, v in found if n == name and labels.items() <= have.items())

    up = [v for n, _labels, v in found if n == "nano_banana_redis_up"]
    return CacheStats(
        hits=value("nano_banana_cache_requests_total", result="hit"),
        misses=value("nano_banana_cache_requests_total", result="miss"),
        coalesced=value("nano_banana_cache_requests_total", result="coalesced"),
        calls_saved=value("nano_banana_cache_upstream_calls_saved_total"),
        cost_saved=value("nano_banana_cost_saved_usd_total"),
        bytes=value("nano_banana_cache_bytes"),
        entries=value("nano_banana_cache_entries"),
        redis_up=up[0] == 1.0 if up else None,
    )


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _state(state: str) -> str:
    colour = _COLOURS.get(state, "#57606a")
    return f'<span class="state" style="background:{colour}">{_e(state)}</span>'


def _seconds(value: float | None) -> str:
    if value is None:
        return '<span class="muted">-</span>'
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def _bar(used: float, limit: float | None, shown: str) -> str:
    """A bar of used / limit with the figures beside it; the figure alone when unlimited."""
    if limit is None or limit <= 0:
        return f'{shown} <span class="muted">(no limit)</span>'
    share = min(1.0, used / limit)
    full = ' class="full"' if share >= 1.0 else ""
    return (
        f'<span class="bar" role="meter" aria-valuenow="{used:g}" aria-valuemax="{limit:g}">'
        f'<span{full} style="width:{share * 100:.0f}%"></span></span>{shown}'
    )


def _upstreams(views: Sequence[UpstreamView]) -> list[str]:
    rows = ["<h2>Upstreams</h2><table><tr><th>upstream</th><th>state</th><th>in flight</th>"
            "<th>tokens usable</th><th>returns in</th><th>last error</th></tr>"]  # fmt: skip
    for u in views:
        rows.append(
            f"<tr><td>{_e(u.name)} <span class='muted'>{_e(u.type)}</span></td>"
            f"<td>{_state(u.state.value)}</td><td>{u.inflight}</td>"
            f"<td>{u.tokens_available} of {len(u.tokens)}</td>"
            f"<td>{_seconds(u.returns_in_seconds)}</td>"
            f"<td class='err'>{_e(u.last_error or '')}</td></tr>"
        )
    rows.append("</table><h2>Tokens</h2><table><tr><th>upstream</th><th>token</th>"
                "<th>state</th><th>in flight</th><th>served</th><th>returns in</th>"
                "<th>last error</th></tr>")  # fmt: skip
    for u in views:
        for t in u.tokens:
            rows.append(
                f"<tr class='token'><td>{_e(u.name)}</td><td><code>{_e(t.id)}</code></td>"
                f"<td>{_state(t.state.value)}</td><td>{t.inflight}</td><td>{t.served}</td>"
                f"<td>{_seconds(t.returns_in_seconds)}</td>"
                f"<td class='err'>{_e(t.last_error or '')}</td></tr>"
            )
    rows.append("</table>")
    return rows


def _teams(days: Sequence[ClientDay], limits: dict[str, ClientConfig]) -> list[str]:
    shared = any(d.shared for d in days)
    where = "every replica (shared through Redis)" if shared else "this process"
    rows = [f"<h2>Teams today (UTC) <span class='muted'>{_e(where)}</span></h2>",
            "<table><tr><th>team</th><th>requests / minute</th><th>in flight</th>"
            "<th>images today</th><th>estimated cost today</th><th>requests today</th>"
            "<th>refused today</th></tr>"]  # fmt: skip
    for d in days:
        cfg = limits.get(d.client) or ClientConfig(name=d.client)  # unknown: no limits
        refused = ", ".join(f"{_e(k)} {v}" for k, v in sorted(d.refused.items())) or "none"
        rows.append(
            f"<tr class='team'><td>{_e(d.client)}</td>"
            f"<td>{_bar(d.recent, cfg.requests_per_minute, str(d.recent))}</td>"
            f"<td>{_bar(d.inflight, cfg.max_concurrent_requests, str(d.inflight))}</td>"
            f"<td>{_bar(d.images, cfg.images_per_day, str(d.images))}</td>"
            f"<td>{_bar(d.cost, cfg.budget_usd_per_day, f'${d.cost:.2f}')}</td>"
            f"<td>{d.requests}</td><td>{refused}</td></tr>"
        )
    rows.append("</table>")
    return rows


def _cache(stats: CacheStats) -> list[str]:
    ratio = stats.hit_ratio
    redis = {None: "not configured", True: "up", False: "DOWN"}[stats.redis_up]
    return [
        "<h2>Cache</h2><table>",
        f"<tr><th>hit ratio</th><td>{'-' if ratio is None else f'{ratio:.0%}'}"
        f" <span class='muted'>({stats.hits:.0f} hits, {stats.coalesced:.0f} coalesced,"
        f" {stats.misses:.0f} misses)</span></td></tr>",
        f"<tr><th>held</th><td>{stats.entries:.0f} entries, "
        f"{stats.bytes / 2**20:.1f} MiB</td></tr>",
        f"<tr><th>saved</th><td>{stats.calls_saved:.0f} upstream calls, "
        f"${stats.cost_saved:.2f}</td></tr>",
        f"<tr><th>Redis</th><td>{_state('ok') if stats.redis_up else ''} {_e(redis)}</td></tr>",
        "</table>",
    ]


def _batches(records: Sequence[BatchRecord], now: float) -> list[str]:
    rows = [
        "<h2>Batches at work</h2>",
        "<table><tr><th>batch</th><th>team</th><th>endpoint</th><th>status</th>"
        "<th>done</th><th>failed</th><th>total</th><th>age</th><th>window left</th></tr>",
    ]
    for r in records:
        rows.append(
            f"<tr><td>{_e(r.id)}</td><td>{_e(r.owner)}</td><td>{_e(r.endpoint)}</td>"
            f"<td>{_state(r.status)}</td><td>{r.completed}</td><td>{r.failed}</td>"
            f"<td>{r.total}</td><td>{_seconds(now - r.created_at)}</td>"
            f"<td>{_seconds(max(0.0, r.expires_at - now))}</td></tr>"
        )
    if not records:
        rows.append("<tr><td colspan='9' class='muted'>none</td></tr>")
    rows.append("</table>")
    return rows


def render_page(
    views: Sequence[UpstreamView],
    days: Sequence[ClientDay],
    clients: Sequence[ClientConfig],
    cache: CacheStats,
    *,
    mock: bool,
    now: float | None = None,
    batches: Sequence[BatchRecord] | None = None,
) -> str:
    """The whole page, from the typed state."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    body = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>nano-banana-gateway</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>nano-banana-gateway <span class='muted'>{_e(when)}</span></h1>",
    ]
    if mock:
        body.append("<p><strong>Serving the offline mock</strong>: no upstream tokens.</p>")
    body += _upstreams(views)
    body += _teams(days, {c.name: c for c in clients})
    body += _cache(cache)
    if batches is not None:
        body += _batches(batches, time.time() if now is None else now)
    body.append(
        f"<p class='muted'>Refreshes every {_REFRESH_SECONDS} s. JSON: /admin/upstreams, "
        "/admin/clients, /admin/batches; history: /metrics.</p>"
        f"<script>setTimeout(function(){{location.reload()}},{_REFRESH_SECONDS * 1000})"
        "</script></body></html>"
    )
    return "".join(body)
