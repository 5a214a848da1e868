"""Debian's chromium driven by Playwright, for the browser tests (the Dagster UI, the review page).

A missing browser is a test failure that says how to install it, never a skip: `make test` installs both.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

try:
    from playwright import sync_api
except ImportError:  # reported by browser_missing(), as a failure
    sync_api = None
CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


def browser_missing() -> str | None:
    """Why no browser can be driven here; None when one can."""
    if sync_api is None:
        return "playwright is not installed (the [test] extra); run `make test`, which installs it"
    if CHROMIUM is None:
        return "Debian's chromium is not installed; run `make test`, which installs it"
    return None


@contextmanager
def chromium() -> Iterator:
    """A launched headless chromium, closed afterwards (check `browser_missing()` first)."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
