"""Chromium for the browser tests (tests/test_browser.py, tests/test_explorers.py): one
browser per session, driven by Playwright, and the built site served from 127.0.0.1. Any request
that would leave the machine is aborted and recorded. Its fixtures are the session's, through
conftest.py.

Needs ``chromium`` (apt-get install chromium) and ``playwright`` (the dev extra); Playwright
never downloads a browser here: it drives /usr/bin/chromium (or $SHENDU_CHROMIUM).
"""
from __future__ import annotations

import functools
import os
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = os.environ.get("SHENDU_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-proxy-server",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 812}
LOCAL_HOSTS = {"127.0.0.1"}


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextmanager
def serve(directory: Path):
    """Serve a folder on 127.0.0.1 (a free port); yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Browser:
    def __init__(self, context):
        self.context = context
        self.blocked: list[str] = []
        context.route("**/*", self._route)

    def _route(self, route, request):
        url = urlsplit(request.url)
        if url.hostname in LOCAL_HOSTS or url.scheme == "file":  # a page opened from disk
            route.continue_()
        else:  # nothing leaves the machine: record it, and abort it
            self.blocked.append(request.url)
            route.abort()


def _require_browser():
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install -e '.[dev]')")
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if missing:
        message = "the browser tests need " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs both: never skip there
        pytest.skip(message)


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh --user-data-dir
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS, viewport=DESKTOP,
            service_workers="block",
        )
        try:
            yield Browser(context)
        finally:
            context.close()


@pytest.fixture(scope="session")
def site(site_dir):
    with serve(site_dir) as base:
        yield base
