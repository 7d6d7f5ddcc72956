"""The README's screenshot of /admin, made with the browser code the tests use, against a
gateway with some history (a benched and a cooling token, two teams, a cache hit, a
refusal, a batch at work):

    python -m tests.support.admin_screenshot      # writes docs/admin-page.png
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path

import openai

from tests.support.browser import look
from tests.support.fakes import FakeUpstream
from tests.support.gateway import ADMIN_KEY, CLIENT_KEY, RunningGateway, make_config, upstream_toml

OUT = Path(__file__).resolve().parents[2] / "docs" / "admin-page.png"
TEAMS = (
    f'[[clients]]\nname = "team-a"\nkey = "{CLIENT_KEY}"\nimages_per_day = 10\n'
    "requests_per_minute = 30\nbudget_usd_per_day = 1.0\nmax_concurrent_requests = 4\n"
    '[[clients]]\nname = "team-b"\nkey = "sk-team-b-0123456789"\n'
    f'[admin]\nkey = "{ADMIN_KEY}"\n[prices]\n"nano-banana" = 0.04\n'
)


def main() -> None:
    ace, defapi = FakeUpstream("acedata").start(), FakeUpstream("defapi").start()
    ace.behave("ace-dead-token-0001", "invalid_token")
    ace.behave("ace-rate-limited-0003", "rate_limit", retry_after=45)
    state = tempfile.mkdtemp(prefix="admin-screenshot-")
    toml = (
        upstream_toml("ace", ace, ["ace-dead-token-0001", "ace-good-0002", "ace-rate-limited-0003"])
        + upstream_toml("def", defapi, ["def-token-00000004"], extra="priority = 1\n")
        + TEAMS
        + f'[state]\ndir = "{state}"\n[batch]\nconcurrency = 1\ninteractive_headroom = 0\n'
    )
    gw = RunningGateway(make_config(toml)).start()
    try:
        client = gw.client()
        for i in range(5):
            client.images.generate(prompt=f"p{i}", response_format="url")
        client.images.generate(prompt="p0", response_format="url")  # a cache hit
        with contextlib.suppress(openai.RateLimitError):
            client.images.generate(prompt="big", n=9, response_format="url")
        gw.client("sk-team-b-0123456789").images.generate(prompt="b", response_format="url")
        _a_batch_at_work(gw, ace)
        look(f"{gw.url}/admin", "ops", ADMIN_KEY, OUT)
    finally:
        gw.stop()
        ace.stop()
        defapi.stop()
    print(f"wrote {OUT}")


def _a_batch_at_work(gw: RunningGateway, ace: FakeUpstream) -> None:
    """A batch of 40 lines, some of them done when the picture is taken."""
    ace.latency = 0.5
    client = gw.client("sk-team-b-0123456789")
    body = "".join(
        json.dumps(
            {
                "custom_id": f"thumb-{i}",
                "method": "POST",
                "url": "/v1/images/generations",
                "body": {"model": "nano-banana", "prompt": f"thumbnail {i}"},
            }
        )
        + "\n"
        for i in range(40)
    )
    uploaded = client.files.create(file=("thumbs.jsonl", body.encode()), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="24h"
    )
    while (client.batches.retrieve(batch.id).request_counts.completed or 0) < 3:
        time.sleep(0.1)


if __name__ == "__main__":
    main()
