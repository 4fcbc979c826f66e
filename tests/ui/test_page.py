"""The web page as a person uses it, in Debian chromium against the stack of conftest.py: the whole flow, double
clicks and two jobs at once, reload mid-task, network drops and a 502 HTML page, cancel and "waiting for a
runner", selfie, the history, the API key gate, errors in words, 320 px and axe-core. The studio's own points
(progress on the real stream, Next variant, viewer, announcements, focus, phone targets) are in test_studio.py."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.ui

FAILED_LOAD = "Failed to load resource"


def open_page(ui, ui_stack, query: str = "") -> None:
    ui.page.goto(f"{ui_stack.base}/{query}")
    expect(ui.page.locator("#generate")).to_be_enabled()


def generate(ui, cue: str) -> None:
    ui.page.fill("#cue", cue)
    ui.page.click("#generate")


def card(ui, index: int = 0):
    """The index-th card, newest first."""
    return ui.page.locator("#tasks > li").nth(index)


def done_image(c):
    img = c.locator(".result img")
    expect(img).to_be_visible(timeout=90_000)
    expect(c).to_have_attribute("data-status", "succeeded")
    return img.get_attribute("src")


def url_state(ui) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(ui.page.url).query).items()}


def test_whole_flow_soul_cue_image_gif_seen_next(ui, ui_stack):
    open_page(ui, ui_stack, "?user=flow-user")
    ui.shot("start")
    ui.page.select_option("#soul", "atlas")
    generate(ui, "penguin")
    first = card(ui)
    expect(first.locator(".card-title")).to_contain_text("Atlas")
    expect(first.locator(".card-title")).to_contain_text("penguin")
    ui.shot("asked")
    image = done_image(first)
    expect(first.locator(".status")).to_contain_text("Done")
    state = url_state(ui)
    assert state["soul"] == "atlas" and state["cue"] == "penguin" and state["user"] == "flow-user" and state["task"]
    ui.shot("image")

    first.get_by_role("button", name="Make a GIF").click()
    gif_card = card(ui)
    # The GIF's card carries its source's title, marked as a GIF, next to its source.
    expect(gif_card.locator(".card-title")).to_have_text(card(ui, 1).locator(".card-title").inner_text())
    expect(gif_card.locator(".badge")).to_have_text("GIF")
    expect(gif_card.locator(".result img")).to_be_visible(timeout=90_000)
    assert ".gif" in gif_card.locator(".result img").get_attribute("src").split("?")[0]
    # The image stays while and after its GIF is made: one task per card.
    assert card(ui, 1).locator(".result img").get_attribute("src") == image
    expect(gif_card.get_by_role("button", name="Download MP4 video")).to_be_visible()
    expect(gif_card.locator(".result video")).to_have_count(0)  # one inline animation, not GIF and MP4 stacked
    ui.shot("gif")

    card(ui, 1).get_by_role("button", name="Mark seen").click()
    expect(card(ui, 1).get_by_role("button", name=re.compile("^Seen"))).to_be_disabled()
    generate(ui, "penguin")
    nxt = card(ui)
    other = done_image(nxt)
    assert other.split("?")[0] != image.split("?")[0], "a seen image was served again"
    ui.shot("next")

    # A larger view opens in place; the page does not navigate away.
    before = ui.page.url
    nxt.get_by_role("button", name=re.compile("^Larger view")).click()
    expect(ui.page.locator("#viewer")).to_be_visible()
    ui.shot("viewer")
    ui.page.keyboard.press("Escape")
    expect(ui.page.locator("#viewer")).to_be_hidden()
    nxt.get_by_role("button", name="Download image").click()
    expect(ui.page.locator("#viewer")).to_be_visible()  # connect-src 'self': shown in the viewer to save
    ui.page.click("#viewer-close")
    assert ui.page.url == before


def test_double_click_sends_one_request_and_two_jobs_keep_their_own_cards(ui, ui_stack):
    posts: list[str] = []
    ui.page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and r.url.endswith("/image") else None)
    open_page(ui, ui_stack, "?user=double-user")
    ui.page.fill("#cue", "lighthouse")
    ui.page.dblclick("#generate")
    expect(card(ui).locator(".card-title")).to_contain_text("lighthouse")
    expect(ui.page.locator("#generate")).to_be_focused()  # busy, not disabled: the keyboard keeps its place
    generate(ui, "harbour")
    expect(card(ui).locator(".card-title")).to_contain_text("harbour")
    srcs = [done_image(card(ui, 1)), done_image(card(ui, 0))]
    ui.shot("two-jobs")
    assert len(posts) == 2, posts
    assert ui.page.locator("#tasks > li").count() == 2
    assert srcs[0].split("?")[0] != srcs[1].split("?")[0]


def test_reload_mid_task_restores_the_form_and_the_task(ui, ui_stack):
    ui_stack.runner.pause()
    open_page(ui, ui_stack, "?user=reload-user&soul=nova")
    generate(ui, "owl at night")
    expect(card(ui)).to_have_attribute("data-task", re.compile(".+"))
    ui.page.wait_for_function("new URLSearchParams(location.search).get('task')")
    task = url_state(ui)["task"]
    ui.page.reload()
    expect(ui.page.locator("#cue")).to_have_value("owl at night")
    expect(ui.page.locator("#user")).to_have_value("reload-user")
    expect(card(ui)).to_have_attribute("data-task", task)
    expect(card(ui).locator(".status")).to_contain_text("Waiting in line")
    expect(card(ui).get_by_role("button", name="Cancel")).to_be_visible()
    ui.shot("restored-queued")
    ui_stack.runner.resume()
    done_image(card(ui))
    ui.shot("restored-done")


def test_network_drop_and_a_502_page_are_retried_and_said_in_words(ui, ui_stack):
    ui.allowed.append(FAILED_LOAD)
    open_page(ui, ui_stack, "?user=flaky-user")
    broken = {"gateway": True, "network": True}
    hits = {"gateway": 0, "network": 0}

    def gateway(route):
        if broken["gateway"]:
            hits["gateway"] += 1
            route.fulfill(status=502, content_type="text/html", body="<html><body>502 Bad Gateway</body></html>")
        else:
            route.continue_()

    def network(route):
        if broken["network"] and route.request.method == "GET":
            hits["network"] += 1
            route.abort()
        else:
            route.continue_()

    ui.page.route(re.compile(r".*/image$"), gateway)
    ui.page.route(re.compile(r".*/tasks/[a-z]+-[0-9a-f-]+(-r[0-9]+)?(/events)?$"), network)
    generate(ui, "storm")
    trouble = card(ui).locator(".trouble")
    expect(trouble).to_contain_text("The service answered with an error page (HTTP 502). Retrying")
    ui.shot("gateway-502")
    broken["gateway"] = False
    expect(trouble).to_contain_text("The service cannot be reached (network error). Retrying in")
    expect(card(ui).get_by_role("button", name="Cancel")).to_be_visible()
    ui.shot("network-down")
    broken["network"] = False
    done_image(card(ui))
    expect(trouble).to_be_hidden()
    assert hits["gateway"] >= 1 and hits["network"] >= 1
    ui.shot("recovered")


def test_errors_are_words_with_the_field_and_the_last_result_stays(ui, ui_stack):
    ui.allowed.append(FAILED_LOAD)
    open_page(ui, ui_stack, "?user=error-user")
    generate(ui, "cactus")
    image = done_image(card(ui))
    ui.page.route(re.compile(r".*/image$"), lambda route: route.fulfill(
        status=400, content_type="application/json",
        body=json.dumps({"error": {"code": "invalid_input", "message": "cue: has no letters", "field": "cue"}})))
    generate(ui, "!!!")
    expect(ui.page.locator("#notice")).to_have_text("Cue: has no letters")
    expect(ui.page.locator("#cue")).to_have_attribute("aria-invalid", "true")
    assert card(ui).locator(".result img").get_attribute("src") == image
    ui.page.unroute(re.compile(r".*/image$"))
    generate(ui, "x" * 900)
    expect(ui.page.locator("#notice")).to_have_text("The cue has 900 characters; the most is 200.")
    expect(ui.page.locator("#cue-count")).to_have_text("900/200")
    assert ui.page.locator("#tasks > li").count() == 1
    ui.shot("errors")


def test_cancel_a_job_no_runner_picks_up(ui, ui_stack):
    ui_stack.runner.pause()
    open_page(ui, ui_stack, "?user=cancel-user")
    generate(ui, "volcano")
    status = card(ui).locator(".status")
    expect(status).to_contain_text("Waiting in line for")
    expect(status).to_contain_text("waiting for a runner", timeout=20_000)
    ui.shot("waiting")
    card(ui).get_by_role("button", name="Cancel").click()
    expect(card(ui)).to_have_attribute("data-status", "canceled")
    expect(status).to_have_text("Canceled")
    expect(card(ui).get_by_role("button", name="Cancel")).to_be_hidden()
    ui.shot("canceled")


def test_selfie_from_the_cities_and_moods_of_the_api(ui, ui_stack):
    open_page(ui, ui_stack, "?user=selfie-user")
    ui.page.click("text=Or a selfie of the character in a city")
    expect(ui.page.locator("#city option")).not_to_have_count(0)
    ui.page.select_option("#city", "tokyo")
    ui.page.select_option("#mood", "calm")
    ui.page.click("#selfie-go")
    expect(card(ui).locator(".card-title")).to_contain_text("Tokyo")
    done_image(card(ui))
    ui.shot("selfie")


def test_gallery_after_three_generations_newest_first(ui, ui_stack):
    open_page(ui, ui_stack, "?user=gallery-user")
    for cue in ("apple", "boat", "cloud"):
        generate(ui, cue)
        done_image(card(ui))
    expect(ui.page.locator("#gallery > li")).to_have_count(3)
    newest = ui.page.locator("#gallery > li img").first.get_attribute("src").split("?")[0]
    assert newest == card(ui).locator(".result img").get_attribute("src").split("?")[0]
    ui.shot("gallery")
    ui.page.locator("#gallery button.thumb").first.click()
    expect(ui.page.locator("#viewer img")).to_be_visible()
    ui.shot("gallery-viewer")


def needs_key(ui, good: str) -> None:
    """The service as it is with auth on: every call without `good` as its key answers 401 (403 for a wrong key)."""
    ui.allowed.append(FAILED_LOAD)

    def guard(route):
        key = route.request.headers.get("x-api-key")
        if key == good or route.request.url.split("?")[0].endswith(("/openapi.json", ".js", ".css", ".svg")):
            route.continue_()
        elif key:
            route.fulfill(status=403, content_type="application/json", body=json.dumps(
                {"error": {"code": "permission_denied", "message": "the API key is not valid for this service"}}))
        else:
            route.fulfill(status=401, content_type="application/json", body=json.dumps(
                {"error": {"code": "unauthenticated", "message": "send an API key", "field": None}}))

    ui.page.route(re.compile(r".*/(me|style|tasks|image|openapi\.json)(\?.*|/.*)?$"), guard)


def test_a_refused_api_key_is_not_kept(ui, ui_stack):
    needs_key(ui, "good-key")
    ui.page.goto(f"{ui_stack.base}/?user=key-user")
    expect(ui.page.locator("#gate")).to_be_visible()
    ui.page.fill("#key", "wrong-key")
    ui.page.click("#key-use")
    expect(ui.page.locator("#key-status")).to_have_text(
        "Key not kept: the API key is not valid for this service")
    assert ui.page.evaluate("localStorage.getItem('soul-key')") is None
    ui.page.fill("#key", "good-key")
    ui.page.click("#key-use")
    expect(ui.page.locator("#key-status")).to_have_text("Key accepted and kept in this browser.")
    assert ui.page.evaluate("localStorage.getItem('soul-key')") == "good-key"
    ui.shot("key")


def test_320px_no_overflow_keyboard_and_axe(ui, ui_stack):
    from axe_playwright_python.sync_playwright import Axe

    ui.page.set_viewport_size({"width": 320, "height": 640})
    open_page(ui, ui_stack, "?user=small-user")
    ui.page.fill("#cue", "a very long cue that wraps around on a small phone screen")
    ui.page.focus("#cue")
    ui.page.keyboard.press("Enter")  # the keyboard alone submits
    done_image(card(ui))
    ui.page.click("text=Or a selfie of the character in a city")
    ui.shot("320")
    width = ui.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 320, f"horizontal overflow: {width}px"
    # Tab order follows the form: soul, cue, user, Generate.
    ui.page.focus("#soul")
    order = []
    for _ in range(3):
        ui.page.keyboard.press("Tab")
        order.append(ui.page.evaluate("document.activeElement.id"))
    assert order == ["cue", "user", "generate"]
    results = Axe().run(ui.page)
    serious = [v for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
    assert serious == [], json.dumps([{k: v[k] for k in ("id", "impact", "help")} for v in serious], indent=1)


def test_docs_header_renders_code_not_backticks(ui, ui_stack):
    ui.page.goto(f"{ui_stack.base}/docs")
    expect(ui.page.locator("#desc code")).to_have_text('{"error": {"code", "message", "field"}}')
    assert "`" not in ui.page.locator("#desc").inner_text()
    expect(ui.page.locator("main details").first).to_be_visible()
    ui.shot("docs")


def test_styles_are_read_only_for_clients_and_a_form_for_admins(ui, ui_stack):
    me = re.compile(r".*/me$")
    ui.page.route(me, lambda route: route.fulfill(json={"tenant": "t1", "role": "client"}))
    open_page(ui, ui_stack, "?user=style-user")
    mira = ui.page.locator('#styles [data-soul="mira"]')
    expect(mira.locator("h3")).to_have_text("Mira")
    expect(mira.locator(".soul-desc")).to_contain_text("long teal hair")  # a description, not raw JSON
    expect(ui.page.locator("#styles form")).to_have_count(0)  # GET /me says client: read-only

    ui.page.unroute(me)
    ui.page.route(me, lambda route: route.fulfill(json={"tenant": "t1", "role": "admin"}))
    open_page(ui, ui_stack, "?user=style-user")
    mira = ui.page.locator('#styles [data-soul="mira"]')
    mira.locator("summary").click()
    mira.get_by_label("Steps").fill("7")
    mira.get_by_role("button", name="Save Mira's style").click()
    mira = ui.page.locator('#styles [data-soul="mira"]')
    expect(mira.locator("[role=status]")).to_have_text("Saved.")
    expect(mira.locator(".facts .kv", has_text="Style").locator("dd")).to_have_text("customised")
    expect(mira.locator(".facts .kv", has_text="Steps").locator("dd")).to_have_text("7")
    mira.get_by_label("Steps").fill("0")
    mira.get_by_role("button", name="Save Mira's style").click()
    expect(mira.locator("[role=status]")).to_contain_text("Not saved: style.steps")
    expect(mira.get_by_label("Steps")).to_have_attribute("aria-invalid", "true")
    ui.shot("admin-styles")
    ui.allowed.append(FAILED_LOAD)  # the refused save answers 400
    import requests

    assert requests.get(f"{ui_stack.base}/style/mira", timeout=10).json()["style"]["steps"] == 7


def test_stage_names_queue_position_and_metrics_read_as_words(ui, ui_stack):
    open_page(ui, ui_stack, "?user=words-user")
    said = ui.page.evaluate("""async () => {
      const v = await import("./ui/views.js");
      const {TaskState} = await import("./ui/state.js");
      const t0 = Date.parse("2026-01-01T00:00:00Z");
      const queued = pos => ({status: "queued", stage: "queued", created_at: "2026-01-01T00:00:00Z",
                              queue_position: pos});
      const running = new TaskState({status: "running", stage: "denoising", created_at: "2026-01-01T00:00:00Z",
                                     started_at: "2026-01-01T00:00:02Z", eta_seconds: 3.2, progress: 0.5}, t0 + 7000);
      return {
        webp: v.stageName("uploading_webp"), model: v.stageName("loading_model"), odd: v.stageName("warming_up_gpu"),
        next: new TaskState(queued(0), t0).line(t0 + 4000),
        third: new TaskState(queued(2), t0).line(t0 + 4000),
        stale_next: new TaskState(queued(0), t0).line(t0 + 75000),
        stale_back: new TaskState(queued(13), t0).line(t0 + 75000),
        running: running.line(t0 + 7000),
        finishing: running.line(t0 + 9800),
        metrics: v.metricsLine({gpu_seconds: 2.345, device: "cuda", model: "sdxl", batch_size: 1}),
      };
    }""")
    assert said == {
        "webp": "Saving the WebP animation", "model": "Loading the model", "odd": "Warming up gpu",
        "next": "Waiting in line for 4 s · next in line",
        "third": "Waiting in line for 4 s · 3rd in line",
        "stale_next": "Waiting in line for 1 min 15 s · next in line · waiting for a runner to pick it up",
        # 14th in line is waiting for the 13 ahead, not for a runner.
        "stale_back": "Waiting in line for 1 min 15 s · 14th in line",
        "running": "Drawing · 50% · running for 5 s · about 3 s left",
        "finishing": "Drawing · 50% · running for 8 s · finishing",
        "metrics": "2.3 GPU-seconds on cuda",
    }


def test_a_service_that_needs_a_key_asks_for_one_first_and_forgetting_it_clears_the_screen(ui, ui_stack):
    needs_key(ui, "team-key")
    ui.page.goto(f"{ui_stack.base}/?user=locked-user")
    # The first screen is the key, alone: no header instructions, no empty list of characters.
    expect(ui.page.locator("#gate")).to_be_visible()
    expect(ui.page.locator("#main")).to_be_hidden()
    expect(ui.page.locator("#key")).to_be_focused()
    assert "X-API-Key" not in ui.page.locator("#gate").inner_text()
    ui.shot("key-needed")
    ui.page.keyboard.type("team-key")
    ui.page.keyboard.press("Enter")
    expect(ui.page.locator("#generate")).to_be_enabled()
    expect(ui.page.locator("#soul option")).to_have_count(3)
    assert ui.page.evaluate("localStorage.getItem('soul-key')") == "team-key"
    generate(ui, "lantern")
    done_image(card(ui))  # with a key the page polls (an EventSource cannot send it)
    expect(card(ui)).to_have_attribute("data-via", "polling")
    expect(ui.page.locator("#gallery > li")).to_have_count(1)
    ui.page.click("#key-forget")
    expect(ui.page.locator("#gate")).to_be_visible()
    expect(ui.page.locator("#tasks > li")).to_have_count(0)
    expect(ui.page.locator("#gallery > li")).to_have_count(0)
    expect(ui.page.locator("#styles > *")).to_have_count(0)
    assert ui.page.evaluate("localStorage.getItem('soul-key')") is None


def test_with_auth_off_no_key_is_asked_for(ui, ui_stack):
    open_page(ui, ui_stack, "?user=open-user")
    expect(ui.page.locator("#gate")).to_be_hidden()
    expect(ui.page.locator("#key-info")).to_have_text("This service needs no API key.")
    expect(ui.page.locator("#key-forget")).to_be_hidden()


def test_download_saves_a_blob_where_the_policy_lets_the_page_fetch_signed_urls(ui, ui_stack):
    ui.page.goto(f"{ui_stack.wide_base}/?user=download-user")
    expect(ui.page.locator("#generate")).to_be_enabled()
    generate(ui, "kite")
    done_image(card(ui))
    with ui.page.expect_download() as saved:
        card(ui).get_by_role("button", name="Download image").click()
    name = saved.value.suggested_filename
    assert name.startswith("soul-atlas-") and name.endswith(".png"), name
    with open(saved.value.path(), "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    expect(ui.page.locator("#viewer")).to_be_hidden()
