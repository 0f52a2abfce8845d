"""Fixtures for the browser tests: headless Chromium from the system, driven by Playwright,
against real Tern meshes started with `tern up` on loopback."""
import os
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from mesh import REPO, TERN, Mesh

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("TERN_SCREENSHOTS", REPO / "docs" / "screenshots"))
VIEWPORT = {"width": 1200, "height": 720}


def pytest_configure(config):
    if not TERN.exists():
        raise pytest.UsageError(f"{TERN} is missing; build it with 'swift build --product tern' (or set TERN_BIN)")
    if not Path(CHROMIUM).exists():
        raise pytest.UsageError(f"{CHROMIUM} is missing; run scripts/setup-browser.sh (or set CHROMIUM)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


def pytest_terminal_summary(terminalreporter):
    stats = terminalreporter.stats
    passed = len(stats.get("passed", []))
    failed = len(stats.get("failed", [])) + len(stats.get("error", []))
    terminalreporter.write_line(f"browser: {passed} passed, {failed} failed")


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as playwright:
        # Root cannot use Chromium's sandbox; the pages are the project's own, on loopback.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def _mesh(request, split):
    mesh = Mesh(split=split)
    try:
        mesh.start_all()
        yield mesh
    finally:
        failed = getattr(request.node, "report_call", None)
        if failed is not None and failed.failed:
            print(f"\nrelay logs:\n{mesh.log_tail()}")
        mesh.close()


@pytest.fixture
def mesh(request):
    """Three regions in one `tern up` process, as a person runs it."""
    yield from _mesh(request, split=False)


@pytest.fixture
def split_mesh(request):
    """Three regions, each its own `tern up --region` process, so one can be killed and started again."""
    yield from _mesh(request, split=True)


class Pages:
    """Browser contexts opened by a test; each is a separate visitor (own storage)."""

    def __init__(self, browser):
        self.browser = browser
        self.contexts = []
        self.console = []

    def open(self, url, init_script=None):
        context = self.browser.new_context(viewport=VIEWPORT)
        if init_script:
            context.add_init_script(init_script)
        self.contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: self.console.append(f"page error on {url}: {error}"))
        page.set_default_timeout(15_000)
        page.goto(url)
        return page

    def close_page(self, page):
        """Closes a visitor's window (its whole context), as a person closing the browser would."""
        self.contexts.remove(page.context)
        page.context.close()

    def close(self):
        for context in self.contexts:
            context.close()


@pytest.fixture
def pages(request, browser):
    pages = Pages(browser)
    yield pages
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for context in pages.contexts:
            for page in context.pages:
                print(f"\n--- {page.url}\n{page.inner_text('body')}")
    pages.close()
    assert not pages.console, "\n".join(pages.console)


@pytest.fixture
def screenshots():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
