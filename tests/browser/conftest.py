"""The web UI in real headless Chromium (Debian's /usr/bin/chromium driven by Playwright) against a real
`virtfleet serve`. Playwright never downloads a browser here: scripts/install.sh --test installs Debian's.

Screenshots of the main pages go to test-output/screenshots/ for a person to look at.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Locator, Page, expect, sync_playwright

from tests.functional.conftest import fake_tiny_builder
from tests.integration.conftest import Daemon, serving_tiny
from virtfleet.api.web import VENDOR_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
PASSWORD = "correct-horse-battery"
# Waits, not timed assertions: long enough for a loaded CI machine, so a failure means it never happened.
expect.set_options(timeout=20_000)


@dataclass
class Ui:
    """A browser page on a running server, plus the server's admin token for setting things up."""

    daemon: Daemon
    context: BrowserContext
    page: Page
    errors: list[str] = field(default_factory=list)  # uncaught exceptions in the page's scripts

    @property
    def base(self) -> str:
        return f"http://{self.daemon.host}:{self.daemon.port}/"

    def add_user(self, name: str, role: str) -> None:
        response = self.daemon.call("POST", "/users", json={"name": name, "role": role, "password": PASSWORD})
        assert response.status_code == 201, response.text

    def goto(self, route: str) -> None:
        self.page.goto(f"{self.base}#/{route}")

    def nav(self, link: str) -> None:
        """Follow a link of the main navigation."""
        self.page.get_by_role("navigation", name="Main").get_by_role("link", name=link, exact=True).click()

    def login(self, name: str, password: str = PASSWORD) -> None:
        self.goto("login")
        self.page.get_by_label("User name").fill(name)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Log in").click()
        expect(self.page.locator("#whoami")).to_contain_text(name)

    def api(self, method: str, path: str, data: Any = None) -> Any:
        """A request from inside the page with its session cookie and CSRF token, as the UI's own code sends it."""
        return self.page.evaluate(
            """async ([method, path, data]) => {
                 const me = await (await fetch('/api/v1/auth/me')).json();
                 const response = await fetch('/api/v1' + path, {method, headers: {
                   'Content-Type': 'application/json', 'X-CSRF-Token': me.csrf_token || ''},
                   body: data === null ? undefined : JSON.stringify(data)});
                 return {status: response.status, body: await response.text()};
               }""",
            [method, path, data])

    def shot(self, name: str, part: Locator | None = None) -> Path:
        """A screenshot of the whole page, or of one part of it."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        if part is not None:
            part.screenshot(path=str(path))
        else:
            self.page.screenshot(path=str(path), full_page=True)
        return path


def _require_browser() -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install.sh --test (it installs Debian's chromium)")
    if not (VENDOR_ROOT / "@xterm" / "xterm" / "lib" / "xterm.mjs").exists():
        pytest.fail(f"{VENDOR_ROOT} has no xterm.js: run scripts/install.sh (npm ci --prefix src/virtfleet/web)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@contextlib.contextmanager
def browser(daemon: Daemon, request: pytest.FixtureRequest) -> Iterator[Ui]:
    _require_browser()
    (SCREENSHOTS / f"failed-{request.node.name}.png").unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="vf-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, viewport=DESKTOP)
        context.set_default_timeout(20_000)
        page = context.pages[0] if context.pages else context.new_page()
        ui = Ui(daemon, context, page)
        page.on("pageerror", lambda error: ui.errors.append(str(error)))
        try:
            yield ui
            if request.node.stash.get(_FAILED, False):  # what the page showed when the test failed
                ui.shot(f"failed-{request.node.name}")
        finally:
            context.close()
    assert ui.errors == [], f"uncaught errors in the page: {ui.errors}"


@pytest.fixture
def fake_ui(short_tmp: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Ui]:
    """A `virtfleet serve` on the fake driver (no QEMU) with a stand-in tiny image, and a browser on it."""
    monkeypatch.setenv("VIRTFLEET_DRIVER", "fake")
    fake_tiny_builder(short_tmp / "images" / "tiny")
    daemon = Daemon(short_tmp)
    daemon.start()
    try:
        with browser(daemon, request) as ui:
            yield ui
    finally:
        daemon.stop()


@pytest.fixture
def qemu_ui(short_tmp: Path, tiny_image_dir: Path, request: pytest.FixtureRequest) -> Iterator[Ui]:
    """A `virtfleet serve` on real QEMU (TCG) with the tiny image, and a browser on it."""
    with serving_tiny(short_tmp, tiny_image_dir) as daemon, browser(daemon, request) as ui:
        yield ui
