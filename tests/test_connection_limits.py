"""An upstream's connection bound: configured, or sized from the open-file limit, and a
warning when it cannot carry what is configured."""

from __future__ import annotations

import pytest

from gateway.http import connection_limit, connection_warning
from gateway.upstreams import build_upstream
from tests.support.gateway import make_config


@pytest.mark.parametrize(
    ("configured", "files", "expected"),
    [
        (None, 1_048_576, 524_160),  # (files - 256 reserved) / 2: a caller's socket each
        (None, 20_000, 9_872),
        (None, 1024, 384),
        (None, 300, 100),  # never below aiohttp's own default
        (64, 1_048_576, 64),  # configured wins
        (50_000, 1024, 50_000),  # even when too high: warned about, not overridden
    ],
)
def test_connection_limit(configured: int | None, files: int, expected: int) -> None:
    assert connection_limit(configured, files) == expected


@pytest.mark.parametrize(
    ("limit", "files", "tokens", "per_token", "says"),
    [
        (9_872, 20_000, 4, 16, None),
        (9_872, 20_000, 4, None, None),
        (32, 20_000, 4, 16, "below what its tokens may have in flight (4 x max_concurrency 16)"),
        (50_000, 1024, 1, None, "needs about 100256 open files and the limit is 1024"),
    ],
)
def test_connection_warning(
    limit: int, files: int, tokens: int, per_token: int | None, says: str | None
) -> None:
    warning = connection_warning("ace", limit, files, tokens, per_token)
    if says is None:
        assert warning is None
    else:
        assert warning is not None and says in warning and warning.startswith("upstream ace:")


def test_upstreams_get_their_bound() -> None:
    config = make_config(
        '[[upstreams]]\nname = "a"\ntype = "acedata"\ntokens = ["t-000001"]\nmax_connections = 77\n'
        '[[upstreams]]\nname = "d"\ntype = "defapi"\ntokens = ["t-000002"]\n'
    )
    first, second = (build_upstream(u) for u in config.upstreams)
    assert first.max_connections == 77  # type: ignore[attr-defined]
    import resource

    files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert second.max_connections == connection_limit(None, files)  # type: ignore[attr-defined]


def test_a_low_bound_is_said_at_start(spawn, fake_factory) -> None:
    fake = fake_factory("acedata")
    gw = spawn(
        f'[[upstreams]]\nname = "ace"\ntype = "acedata"\nbase_url = "{fake.base_url}"\n'
        'tokens = ["tok-000001", "tok-000002"]\nmax_concurrency = 8\nmax_connections = 10\n'
    )
    assert "upstream ace: max_connections 10 is below what its tokens may have in flight" in (
        gw.log()
    )
