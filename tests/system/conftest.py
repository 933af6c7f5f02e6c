"""Fixtures of the browser tests: Debian's chromium driven by Playwright, the seeded app
(each module's `seeded` fixture) served over loopback HTTP, and the problems a page reports."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from tests.support.browser import CHROMIUM_ARGS, TIMEOUT_MS, LiveServer, chromium_executable


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, driven by Playwright (no `playwright install`)."""
    executable = chromium_executable()
    if executable is None:  # only under CI: elsewhere the module is skipped
        pytest.fail("CI is set but chromium is not installed: apt-get install chromium "
                    "(as .ci/test does) or point $CHROMIUM at a chromium binary")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable,
                                              args=list(CHROMIUM_ARGS), headless=True,
                                              timeout=TIMEOUT_MS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def live(seeded: tuple[Flask, Any]) -> Iterator[LiveServer]:
    """The seeded app served over HTTP on a free loopback port."""
    with LiveServer(seeded[0]) as server:
        yield server


@pytest.fixture
def problems() -> list[str]:
    """The console errors and page errors of the test's page (a CSP violation is one)."""
    return []
