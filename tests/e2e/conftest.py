"""Fixtures of the browser tests: the example project served by daphne, and Debian's chromium
driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .server import ROOT, ExampleServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
#: screenshots and the server log, kept as test artifacts (gitignored)
ARTIFACTS = ROOT / "artifacts" / "e2e"
#: seconds between the demo client's words: slow enough to watch a reply grow and stop it
DEMO_DELAY = 0.12


@pytest.fixture(scope="module")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def example_server(artifacts: Path) -> Iterator[ExampleServer]:
    with ExampleServer(log=artifacts / "server.log", demo_delay=DEMO_DELAY) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: the browser tests drive Debian's chromium. "
                    "Install it with scripts/install-browser.sh (apt-get install chromium).",
                    pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
