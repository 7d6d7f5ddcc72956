"""How the cost of waiting requests grows: 1,000 to 8,000 requests held on a slow upstream.

    python bench/run.py --scenario waits            # 1,000 / 2,000 / 4,000 / 8,000
    python bench/run.py --scenario waits --quick    # 200 / 400

For each count, fresh processes (the fake upstream with a 10 s latency, the gateway, the
pass-through) and the same load three times, in turns: straight to the fake (`direct`,
the yardstick: what the machine can hold at all), through the pass-through, and through the
gateway. Requests arrive over 2.5 s per 1,000 (so that all of them are waiting together
before the first is answered) and each is given the upstream latency plus 60 s.

Reported per count and target: requests answered, added p99 (over the upstream's 10 s),
peak RSS (VmHWM) and KiB of it per waiting request over the idle process, and CPU per
request. The issue's targets are checked at the largest count: the gateway answers at least
95% as many as the direct run, adds at most 1 s at p99, and peaks at no more than 300 MB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import run  # bench/run.py: the process helpers and the load driver

LATENCY_S = 10.0
COUNTS = (1000, 2000, 4000, 8000)
QUICK_COUNTS = (200, 400)
RAMP_S_PER_1000 = 2.5


def _one(settings: run.Settings, tmp: Path, n: int) -> dict[str, Any]:
    rate = n / (RAMP_S_PER_1000 * n / 1000)
    out: dict[str, Any] = {}
    with run.stack(settings, LATENCY_S, 0, tmp) as s:
        where = run.targets(s)
        for name in ("gateway", "passthrough"):
            run.drive(s, where[name], total=64, concurrency=64, prompt="warm {i}")
        procs = {"gateway": s.gateway, "passthrough": s.passthrough, "direct": s.fake}
        for name in ("direct", "passthrough", "gateway"):
            idle = procs[name].rss_mib()
            r = run.drive(
                s,
                where[name],
                total=n,
                concurrency=n,
                prompt=f"waits-{n}-{name} {{i}}",
                rate=rate,
                timeout=LATENCY_S + 60,
            )
            p99 = r.load["latency_ms"]["p99"]
            peak = procs[name].peak_rss_mib()
            out[name] = {
                "ok": r.load["ok"],
                "failed": r.load["failed"],
                "outcomes": r.load["outcomes"],  # what the failed ones met, by kind
                "added_p99_ms": None if p99 is None else round(p99 - LATENCY_S * 1000, 1),
                "peak_rss_mib": round(peak, 1),
                "kib_per_waiting_request": round((peak - idle) * 1024 / n, 1),
                "cpu_ms_per_request": round(
                    r.cpu_s["upstream" if name == "direct" else name] * 1000 / max(1, r.load["ok"]),
                    3,
                ),
            }
    return out


def scenario(settings: run.Settings, tmp: Path) -> dict[str, Any]:
    counts = QUICK_COUNTS if settings.quick else COUNTS
    return {
        "upstream_latency_s": LATENCY_S,
        "counts": {str(n): _one(settings, tmp, n) for n in counts},
    }


def verdicts(r: dict[str, Any]) -> list[run.Verdict]:
    """The issue's targets, at the largest count measured."""
    n = max(int(k) for k in r["counts"])
    at = r["counts"][str(n)]
    gw, direct = at["gateway"], at["direct"]
    share = gw["ok"] / max(1, direct["ok"])
    p99 = gw["added_p99_ms"] if gw["added_p99_ms"] is not None else float("inf")
    mb = gw["peak_rss_mib"] * 1.048576  # MiB -> MB
    return [
        run.Verdict(
            "waits",
            f"{n} waits answered vs direct",
            round(share, 3),
            ">= 0.95",
            "met" if share >= 0.95 else "NOT MET",
            f"gateway {gw['ok']}, direct {direct['ok']}",
        ),
        run.Verdict(
            "waits",
            f"{n} waits p99 added ms",
            p99,
            "<= 1000",
            "met" if p99 <= 1000 else "NOT MET",
            f"pass-through {at['passthrough']['added_p99_ms']} ms",
        ),
        run.Verdict(
            "waits",
            f"{n} waits peak RSS MB",
            round(mb, 1),
            "<= 300",
            "met" if mb <= 300 else "NOT MET",
            f"{gw['kib_per_waiting_request']} KiB per waiting request",
        ),
    ]


def table(r: dict[str, Any]) -> list[str]:
    """'How the cost grows': one row per count and target."""
    lines = [
        f"\nhow the cost grows: upstream {r['upstream_latency_s']:g} s",
        f"  {'waits':>6} {'target':<12} {'ok':>6} {'p99 added ms':>13} {'peak RSS MiB':>13}"
        f" {'KiB/wait':>9} {'CPU ms/req':>11}",
    ]
    for n, at in r["counts"].items():
        for name in ("direct", "passthrough", "gateway"):
            v = at[name]
            lines.append(
                f"  {n:>6} {name:<12} {v['ok']:>6} {v['added_p99_ms']!s:>13}"
                f" {v['peak_rss_mib']:>13} {v['kib_per_waiting_request']:>9}"
                f" {v['cpu_ms_per_request']:>11}"
            )
    return lines
