"""The browser tests' fixtures: `drlora serve` started as a newcomer would (a fresh HOME, a free port), and Debian's
chromium driven by Playwright through `executable_path` (Playwright's own browser downloads are not used).

`make test` installs chromium first (scripts/browser.sh); without it these tests fail, naming the fix."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support.service import Api, Process, free_port, start_serve

CHROMIUM_NAMES = ("chromium", "chromium-browser")
# Generous waits: the CI machine is shared with worker processes that train while the page is checked.
TIMEOUT_MS = 60_000
expect.set_options(timeout=TIMEOUT_MS)


@dataclass
class Served:
    home: Path
    url: str
    key: str
    proc: Process
    api: Api

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.home / '.drlora' / 'drlora.db'}"


@pytest.fixture(scope="package")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("home")
    port = free_port()
    proc = start_serve(home, port, DRLORA_DEVICE="cpu")
    url, key = f"http://127.0.0.1:{port}", (home / ".drlora" / "api_key").read_text().strip()
    api = Api(url, key)
    try:
        yield Served(home, url, key, proc, api)
    finally:
        api.http.close()
        proc.stop(signal.SIGINT, timeout=90)


def chromium_path() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError("chromium is not installed: run `bash scripts/browser.sh` (make test does)")


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # --no-sandbox: CI containers run as root, where chromium's sandbox refuses to start.
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage) that fails the test on a script error or a Content-Security-Policy
    violation."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    tab.on("console", lambda message: problems.append(message.text)
           if "Content Security Policy" in message.text else None)
    yield tab
    context.close()
    assert not problems, problems


def sign_in(page: Page, served: Served, key: str | None = None) -> None:
    """Signs in through the form; with the served key, waits until the jobs list shows (signed in)."""
    page.goto(f"{served.url}/")
    page.get_by_label("API key").fill(key or served.key)
    page.get_by_role("button", name="Sign in").click()
    if key is None:
        expect(page.get_by_role("heading", name="Fine-tuning jobs")).to_be_visible()
