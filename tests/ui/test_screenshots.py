"""Screenshots of each state of the page (key gate, first screen, a task rendering, a result with its history,
the viewer) at 1440 px and 390 px, light and dark, from the real stack. They go to `.soul/ui/states/`; with
`SOUL_SCREENSHOTS=docs` they also replace the committed ones under docs/screenshots/ (palette PNGs, small):

    SOUL_SCREENSHOTS=docs .venv/bin/python -m pytest -m ui tests/ui/test_screenshots.py
"""

from __future__ import annotations

import io
import json
import os
import re

import pytest
from playwright.sync_api import expect

from tests.ui.conftest import REPO, SHOTS

pytestmark = pytest.mark.ui

WIDTHS = {"desktop": (1440, 900), "phone": (390, 844)}
CUES = {"desktop": "reading in a cafe", "phone": "walking in the rain"}
SCHEMES = ("light", "dark")
STATES = ("key", "start", "running", "result", "viewer")
DOCS = REPO / "docs" / "screenshots"


def save(page, state: str, width: str) -> None:
    from PIL import Image

    for scheme in SCHEMES:
        page.emulate_media(color_scheme=scheme)
        page.wait_for_timeout(150)
        png = page.screenshot(full_page=False)
        image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
        targets = [SHOTS / "states"]
        if os.environ.get("SOUL_SCREENSHOTS") == "docs":
            targets.append(DOCS)
        for folder in targets:
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{state}-{width}-{scheme}.png", optimize=True)
    page.emulate_media(color_scheme="light")


def test_screenshots_of_each_state(browser, ui_stack):
    from PIL import Image

    for width, (w, hgt) in WIDTHS.items():
        context = browser.new_context(viewport={"width": w, "height": hgt}, has_touch=width == "phone",
                                      is_mobile=width == "phone")
        page = context.new_page()
        page.set_default_timeout(30_000)
        try:
            ui_stack.runner.resume()
            ui_stack.runner.pace_s = 0.4
            # The key gate: the service as it is with auth on.
            page.route(re.compile(r".*/me$"), lambda route: route.fulfill(status=401, content_type="application/json",
                       body=json.dumps({"error": {"code": "unauthenticated", "message": "send an API key"}})))
            page.goto(f"{ui_stack.base}/")
            expect(page.locator("#gate")).to_be_visible()
            save(page, "key", width)
            page.unroute(re.compile(r".*/me$"))

            user = f"shots-{width}"
            page.goto(f"{ui_stack.base}/?user={user}&soul=nova&cue={CUES[width].replace(' ', '%20')}")
            expect(page.locator("#generate")).to_be_enabled(timeout=30_000)
            expect(page.locator("#gallery-note")).not_to_contain_text("Loading")
            save(page, "start", width)

            page.click("#generate")
            first = page.locator("#tasks > li").first
            expect(first.locator(".status")).to_contain_text("%", timeout=90_000)
            save(page, "running", width)
            expect(first.locator(".result img")).to_be_visible(timeout=90_000)
            ui_stack.runner.pace_s = 0.0
            first.get_by_role("button", name="Next variant").click()
            expect(page.locator("#tasks > li")).to_have_count(2)
            expect(page.locator("#tasks > li").first.locator(".result img")).to_be_visible(timeout=90_000)
            expect(page.locator("#gallery > li").first).to_be_visible()
            page.locator("#tasks > li").first.scroll_into_view_if_needed()
            save(page, "result", width)

            page.locator("#gallery button.thumb").first.click()
            expect(page.locator("#viewer")).to_be_visible()
            save(page, "viewer", width)
        finally:
            ui_stack.runner.pace_s = 0.0
            context.close()
            ui_stack.runner.pause()
    for state in STATES:
        for width, (w, _) in WIDTHS.items():
            for scheme in SCHEMES:
                with Image.open(SHOTS / "states" / f"{state}-{width}-{scheme}.png") as shot:
                    assert shot.width == w, (state, width, scheme, shot.size)
