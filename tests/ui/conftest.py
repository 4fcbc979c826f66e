"""The stack the page's browser tests drive, kept light: the shared emulators, the real `api` function served
over HTTP in a thread (behind the Content-Security-Policy the page must live with), a runner with the tiny
offline model in a thread that tests can pause, and Debian's chromium driven by Playwright.

Screenshots go to `.soul/ui/` (one per step) so a person can look at what the browser saw."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / ".soul" / "ui"
CHROMIUM = os.environ.get("SOUL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Console messages a test may cause on purpose (an aborted request, a 502) are listed by that test.
CONSOLE_NOISE: tuple[str, ...] = ()


def page_csp(signed_origin: str) -> str:
    """The policy agreed for the page (set by the functions in production); signed URLs live on `signed_origin`."""
    return (f"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: {signed_origin}; "
            f"media-src 'self' blob: {signed_origin}; connect-src 'self'; frame-ancestors 'none'")


class WithCsp:
    """WSGI middleware: the pages served under the policy a test names (the narrow one forbids fetching signed URLs,
    the wide one allows it), in place of the one the function sets; JSON answers keep their own."""

    def __init__(self, app, csp: str):
        self._app = app
        self._csp = csp

    def __call__(self, environ, start_response):
        def start(status, headers, exc_info=None):
            is_page = any(k.lower() == "content-type" and v.startswith("text/html") for k, v in headers)
            if is_page or not any(k.lower() == "content-security-policy" for k, _ in headers):
                headers = [*[(k, v) for k, v in headers if k.lower() != "content-security-policy"],
                           ("Content-Security-Policy", self._csp)]
            return start_response(status, headers, exc_info)

        return self._app(environ, start)


class RunnerSwitch:
    """A runner with the tiny model in a thread; `pause()` returns once it has stopped taking jobs, `resume()`
    starts a fresh one (same clients and loaded models). `pace_s` > 0 makes each denoising step take that long
    (the tiny model renders in a blink; a test that watches progress move needs a render it can see)."""

    def __init__(self, settings, models):
        from gpu_runner.adapters.clients import make_clients

        self._settings = settings
        self._models = models
        self._clients = make_clients(settings)
        self._runner = None
        self._thread: threading.Thread | None = None
        self.pace_s = 0.0

    def resume(self) -> None:
        from gpu_runner import failpoints
        from gpu_runner.worker import Runner

        if self._thread is not None and self._thread.is_alive():
            return
        self._runner = Runner(self._settings, self._clients, self._models)
        points = self._runner._work.failpoints
        hit = points.hit

        def paced(name, **context):
            if name == failpoints.MID_RENDER and self.pace_s > 0:
                time.sleep(self.pace_s)
            hit(name, **context)

        points.hit = paced  # the runner's own failpoints object: no failpoint is armed in these tests
        self._thread = threading.Thread(target=self._runner.run, name="ui-runner", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        if self._thread is None:
            return
        self._runner.stop()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the runner did not stop"
        self._thread = None

    close = pause


@dataclass
class UiStack:
    base: str
    runner: RunnerSwitch
    signed_origin: str
    csp: str
    wide_base: str


@pytest.fixture(scope="session")
def ui_stack(emulator_stack, api_app, tmp_path_factory) -> Iterator[UiStack]:
    from werkzeug.serving import make_server

    from gpu_runner.pipelines.host import ModelHost
    from gpu_runner.settings import RunnerSettings

    emulator_stack.reset_firestore()
    signed = urlsplit(os.environ["SOUL_SIGNED_URL_ENDPOINT"])
    signed_origin = f"{signed.scheme}://{signed.netloc}"
    csp = page_csp(signed_origin)
    server = make_server("127.0.0.1", 0, WithCsp(api_app, csp), threaded=True)
    serving = threading.Thread(target=server.serve_forever, name="ui-api", daemon=True)
    serving.start()
    # The same api under a policy that lets the page fetch signed URLs (downloads as blobs).
    wide = make_server("127.0.0.1", 0, WithCsp(api_app, csp.replace("connect-src 'self'",
                                                                    f"connect-src 'self' {signed_origin}")),
                       threaded=True)
    wide_serving = threading.Thread(target=wide.serve_forever, name="ui-api-wide", daemon=True)
    wide_serving.start()
    settings = RunnerSettings(
        model_cache_dir=tmp_path_factory.getbasetemp() / "models",
        pull_timeout_seconds=0.5, heartbeat_seconds=0.2, progress_interval_seconds=0.1,
        svd_image_width=96, svd_image_height=64, tiny_max_steps=12, tiny_svd_max_steps=3,
        preview_every=3,  # previews of the forming image on `event: preview` (the page shows them in the card)
    )
    runner = RunnerSwitch(settings, ModelHost(settings))
    runner.resume()
    try:
        yield UiStack(base=f"http://127.0.0.1:{server.server_port}", runner=runner, signed_origin=signed_origin,
                      csp=csp, wide_base=f"http://127.0.0.1:{wide.server_port}")
    finally:
        runner.close()
        for srv, thread in ((server, serving), (wide, wide_serving)):
            srv.shutdown()
            thread.join(timeout=10)


@pytest.fixture(scope="session")
def browser(ui_stack):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # launch() gives every run a fresh, temporary user-data-dir.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class Watched:
    """A page with its console errors and uncaught exceptions collected, and numbered screenshots."""

    def __init__(self, page, name: str):
        self.page = page
        self.name = re.sub(r"[^a-z0-9_]+", "_", name.lower())
        self.errors: list[str] = []
        self.allowed: list[str] = []
        self._shots = 0
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def shot(self, step: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self._shots += 1
        self.page.screenshot(path=str(SHOTS / f"{self.name}-{self._shots:02d}-{step}.png"), full_page=True)

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in self.allowed)]


@pytest.fixture
def ui(browser, ui_stack, request) -> Iterator[Watched]:
    ui_stack.runner.resume()
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    page.set_default_timeout(30_000)
    watched = Watched(page, request.node.name)
    try:
        yield watched
        assert watched.unexpected_errors() == [], "the page logged errors"
    finally:
        context.close()
        # Between the page's tests nothing takes jobs: other tests of the session count their own queued jobs.
        ui_stack.runner.pace_s = 0.0
        ui_stack.runner.pause()
