"""A real browser for the tests that look at a page: Debian's chromium, headless, driven
by Playwright (whose own browser download cannot reach the internet here)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Seen:
    """What a person sees on the page."""

    title: str
    token_rows: list[str]
    team_rows: list[str]
    bars: int
    text: str


def chromium() -> str:
    """The browser binary; a missing one is a failure (.ci/run installs it), not a skip."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError("chromium is not installed: apt-get install chromium")
    return found


def look(url: str, user: str, password: str, screenshot: Path) -> Seen:
    """Open `url` with HTTP Basic credentials (as a browser prompt would send them), read
    the page as rendered, and save a full-page screenshot."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start.
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            context = browser.new_context(
                http_credentials={"username": user, "password": password},
                viewport={"width": 1280, "height": 800},
            )
            page = context.new_page()
            page.goto(url, wait_until="load")
            seen = Seen(
                title=page.title(),
                token_rows=[r.inner_text() for r in page.locator("tr.token").all()],
                team_rows=[r.inner_text() for r in page.locator("tr.team").all()],
                bars=page.locator(".bar").count(),
                text=page.inner_text("body"),
            )
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return seen
