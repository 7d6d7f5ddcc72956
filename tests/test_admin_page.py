"""The operator's page: rendered from the pool's, the teams' and the cache's state, behind
the admin key (Bearer or a browser's Basic prompt), and looked at in a real browser."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import openai
import pytest
from PIL import Image

from tests.support.browser import look
from tests.support.gateway import ADMIN_KEY, CLIENT_KEY, upstream_toml

DEAD = "ace-SECRET-dead-0001"
GOOD = "ace-SECRET-good-0002"
KEY_B = "sk-team-b-0123456789"
PAGE_SECRETS = (DEAD, GOOD, CLIENT_KEY, KEY_B, ADMIN_KEY)


def _teams(extra_a: str = "") -> str:
    return (
        f'[[clients]]\nname = "team-a"\nkey = "{CLIENT_KEY}"\nimages_per_day = 10\n'
        f"requests_per_minute = 30\n{extra_a}\n"
        f'[[clients]]\nname = "team-b"\nkey = "{KEY_B}"\n'
        f'[admin]\nkey = "{ADMIN_KEY}"\n'
        '[prices]\n"nano-banana" = 0.04\n'
    )


@pytest.fixture
def busy(fake_factory: Any, gateway_factory: Any) -> Any:
    """A gateway with some history: a benched token, two teams' requests, a cache hit and
    a refusal."""
    fake = fake_factory("acedata")
    fake.behave(DEAD, "invalid_token")
    gw = gateway_factory(
        upstream_toml("ace", fake, [DEAD, GOOD]) + _teams("budget_usd_per_day = 1.0")
    )
    a = gw.client()
    a.images.generate(prompt="first", n=3, response_format="url")
    a.images.generate(prompt="first", n=3, response_format="url")  # a cache hit
    with pytest.raises(openai.RateLimitError):
        a.images.generate(prompt="too many", n=8, response_format="url")
    gw.client(KEY_B).images.generate(prompt="b", response_format="url")
    return gw


def _basic(password: str, user: str = "ops") -> tuple[str, str]:
    return (user, password)


def test_the_page_shows_the_pool_the_teams_and_the_cache(busy: Any) -> None:
    with busy.http() as http:
        r = http.get("/admin", auth=_basic(ADMIN_KEY))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    # The pool: the upstream, both tokens by redacted id, the dead one benched.
    assert "<td>ace <span class='muted'>acedata</span></td>" in page
    tokens = re.findall(r"<tr class='token'>(.*?)</tr>", page)
    assert len(tokens) == 2
    states = sorted(re.search(r'class="state"[^>]*>(\w+)<', t).group(1) for t in tokens)
    assert states == ["benched", "ok"]
    assert all(re.search(r"<code>t-[0-9a-f]{8}</code>", t) for t in tokens)
    # The teams: team-a made 3 images of its 10 (the hit and the refusal cost nothing).
    (team_a,) = [t for t in re.findall(r"<tr class='team'>(.*?)</tr>", page) if "team-a" in t]
    assert 'aria-valuenow="3" aria-valuemax="10"' in team_a
    assert 'aria-valuemax="30"' in team_a  # requests per minute
    assert "$0.12" in team_a and "images_per_day 1" in team_a
    # The cache: one hit of two answered requests... plus team-b's miss.
    assert "hit ratio</th><td>33%" in page
    assert "Redis</th><td> not configured" in page
    for secret in PAGE_SECRETS:
        assert secret not in page


def test_without_the_key_the_browser_is_asked_for_it(busy: Any) -> None:
    with busy.http() as http:
        missing = http.get("/admin")
        wrong = http.get("/admin", auth=_basic("not-the-admin-key"))
        bearer = http.get("/admin", headers={"authorization": f"Bearer {ADMIN_KEY}"})
        header = http.get("/admin", headers={"x-admin-key": ADMIN_KEY})
        any_user = http.get("/admin", auth=_basic(ADMIN_KEY, user=""))
    for refused in (missing, wrong):
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Basic realm=")
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert ADMIN_KEY not in refused.text
    assert [bearer.status_code, header.status_code, any_user.status_code] == [200, 200, 200]


def test_no_admin_key_no_page(fake_factory: Any, gateway_factory: Any) -> None:
    fake = fake_factory("acedata")
    gw = gateway_factory(upstream_toml("ace", fake, [GOOD]))
    with gw.http() as http:
        r = http.get("/admin", auth=_basic("anything-at-all"))
    assert r.status_code == 404


def test_a_person_with_a_browser_sees_it(busy: Any, tmp_path: Path) -> None:
    shot = tmp_path / "admin.png"
    seen = look(f"{busy.url}/admin", "ops", ADMIN_KEY, shot)
    assert seen.title == "nano-banana-gateway"
    assert len(seen.token_rows) == 2
    assert sum("benched" in row for row in seen.token_rows) == 1
    assert any("team-a" in row and "$0.12" in row for row in seen.team_rows)
    assert seen.bars == 3  # team-a's three limits; team-b has none
    for secret in PAGE_SECRETS:
        assert secret not in seen.text
    with Image.open(shot) as image:
        width, height = image.size
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert width == 1280 and height >= 400
    # Not a blank page: text, the state colours and the bars are drawn.
    assert colours is None or len(colours) > 20
