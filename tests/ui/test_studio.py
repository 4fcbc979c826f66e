"""The page as a studio, on the real event stream (the api's `GET /tasks/{id}/events` and a tiny-model runner on
the emulators; nothing stubbed): progress and stage move before the result on both paths (SSE, and polling
with a key), the next variant in one click, a reload restores every task of the user, the viewer's details and
previous/next, one announcement per stage, focus kept on the acted-on card, 44 px phone targets, previews in the
card, offline said at once, keyboard shortcuts and dark mode."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.ui.test_page import FAILED_LOAD, card, done_image, generate, open_page

pytestmark = pytest.mark.ui

# Every change of the first card's state, as the page showed it, in order.
RECORD = """() => {
  window.__seen = [];
  const note = () => {
    const li = document.querySelector("#tasks > li");
    if (!li) return;
    const row = {status: li.dataset.status || "", stage: li.dataset.stage || "", progress: li.dataset.progress || "",
                 text: li.querySelector(".status").textContent, via: li.dataset.via || ""};
    const last = window.__seen[window.__seen.length - 1];
    if (!last || last.status !== row.status || last.stage !== row.stage || last.progress !== row.progress)
      window.__seen.push(row);
  };
  new MutationObserver(note).observe(document.getElementById("tasks"),
    {subtree: true, attributes: true, childList: true, characterData: true});
}"""

# Every text a status live region inside the task list took.
ANNOUNCED = """() => {
  window.__said = [];
  const seen = new WeakMap();
  const note = () => {
    for (const el of document.querySelectorAll("#tasks [role=status]")) {
      const text = el.textContent;
      if (text && seen.get(el) !== text) { seen.set(el, text); window.__said.push(text); }
    }
  };
  new MutationObserver(note).observe(document.getElementById("tasks"),
    {subtree: true, childList: true, characterData: true});
}"""


def running_before_done(rows: list[dict]) -> list[dict]:
    done = next(i for i, r in enumerate(rows) if r["status"] == "succeeded")
    return [r for r in rows[:done] if r["status"] == "running"]


@pytest.mark.parametrize("path", ["events", "polling"])
def test_progress_and_stage_move_before_the_result(ui, ui_stack, path):
    ui_stack.runner.pace_s = 0.25
    if path == "polling":  # with a key the page polls (auth is off here, so any key is taken)
        ui.page.add_init_script("localStorage.setItem('soul-key', 'any-key')")
    streams: list[str] = []
    ui.page.on("request", lambda r: streams.append(r.url) if r.url.endswith("/events") else None)
    open_page(ui, ui_stack, f"?user=progress-{path}")
    ui.page.evaluate(RECORD)
    generate(ui, f"sailboat {path}")
    expect(card(ui)).to_have_attribute("data-status", "running", timeout=30_000)
    # (a runner's first job loads the model first: half a minute on this machine)
    expect(card(ui).locator(".status")).to_contain_text("%", timeout=90_000)
    ui.shot(f"running-{path}")
    done_image(card(ui))
    rows = ui.page.evaluate("window.__seen")
    running = running_before_done(rows)
    progress = sorted({float(r["progress"]) for r in running if r["progress"]})
    assert len([p for p in progress if 0 < p < 1]) >= 3, rows  # at least three steps seen between 0 and 1
    # The stage changes too (waiting, loading, drawing, saving…), before the result.
    before = rows[:next(i for i, r in enumerate(rows) if r["status"] == "succeeded")]
    assert len({r["stage"] for r in before if r["stage"]}) >= 2, rows
    expect(card(ui)).to_have_attribute("data-via", path)
    assert bool(streams) == (path == "events"), streams


def test_the_next_variant_arrives_with_one_click_next_to_its_card(ui, ui_stack):
    open_page(ui, ui_stack, "?user=next-user")
    generate(ui, "red fox in snow")
    first = done_image(card(ui))
    generate(ui, "snowy owl")
    done_image(card(ui))
    fox = ui.page.locator("#tasks > li", has_text="red fox")
    fox.get_by_role("button", name="Next variant").click()
    expect(ui.page.locator("#tasks > li")).to_have_count(3)
    # The new card lands right next to the one acted on (not at the top), and the focus stays on that card.
    newer = ui.page.locator("#tasks > li").nth(1)
    expect(newer.locator(".card-title")).to_contain_text("fox")
    src = done_image(newer)
    assert src.split("?")[0] != first.split("?")[0], "the next variant is the same picture"
    expect(ui.page.locator("#tasks > li").nth(2).get_by_role("button", name="Seen")).to_be_disabled()
    assert ui.page.evaluate("document.activeElement.textContent") == "Next variant"
    assert ui.page.evaluate(
        "document.activeElement.closest('#tasks > li') === document.querySelectorAll('#tasks > li')[2]")
    ui.shot("next-variant")
    # The keyboard: N on a card asks for its next variant.
    ui.page.locator("#tasks > li").nth(1).focus()
    ui.page.keyboard.press("n")
    expect(ui.page.locator("#tasks > li")).to_have_count(4)
    done_image(ui.page.locator("#tasks > li").nth(1))


def test_a_reload_restores_every_task_of_the_user(ui, ui_stack):
    ui_stack.runner.pause()
    open_page(ui, ui_stack, "?user=restore-user&soul=mira")
    generate(ui, "river")
    expect(card(ui)).to_have_attribute("data-task", re.compile(".+"))
    generate(ui, "meadow")
    expect(ui.page.locator("#tasks > li[data-task]")).to_have_count(2)
    tasks = set(ui.page.locator("#tasks > li").evaluate_all("els => els.map(e => e.dataset.task)"))
    ui.page.reload()
    expect(ui.page.locator("#tasks > li[data-task]")).to_have_count(2)
    assert set(ui.page.locator("#tasks > li").evaluate_all("els => els.map(e => e.dataset.task)")) == tasks
    expect(ui.page.locator("#tasks > li", has_text="river").locator(".status")).to_contain_text("Waiting in line")
    expect(ui.page.locator("#tasks > li", has_text="meadow")).to_be_visible()
    ui.shot("restored")
    ui_stack.runner.resume()
    for i in range(2):
        done_image(card(ui, i))
    expect(ui.page.locator("#gallery > li")).to_have_count(2)


def test_the_viewer_shows_details_previous_next_and_copies_a_link(ui, ui_stack):
    ui.page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    open_page(ui, ui_stack, "?user=viewer-user&soul=nova")
    for cue in ("tulip", "comet"):
        generate(ui, cue)
        done_image(card(ui))
    expect(ui.page.locator("#gallery > li")).to_have_count(2)
    tile = ui.page.locator("#gallery > li").first
    expect(tile.locator(".caption")).to_contain_text("Nova · “comet”")
    expect(tile.locator(".meta")).to_contain_text("seed")
    tile.locator("button.thumb").click()
    viewer = ui.page.locator("#viewer")
    expect(viewer).to_be_visible()
    details = {k: v for k, v in zip(viewer.locator("dt").all_inner_texts(), viewer.locator("dd").all_inner_texts())}
    assert details["Character"] == "Nova" and details["Cue"] == "comet", details
    assert re.fullmatch(r"\d+", details["Seed"]) and re.fullmatch(r"\d+×\d+", details["Size"]), details
    assert re.fullmatch(r"[\d.]+ s", details["GPU time"]) and details["Made"], details
    ui.shot("viewer")
    expect(ui.page.locator("#viewer-prev")).to_be_disabled()
    ui.page.keyboard.press("ArrowRight")
    expect(ui.page.locator("#viewer-title")).to_have_text("Nova · “tulip”")
    expect(ui.page.locator("#viewer-next")).to_be_disabled()
    ui.page.keyboard.press("ArrowLeft")
    expect(ui.page.locator("#viewer-title")).to_have_text("Nova · “comet”")
    # The viewer's media fills its space: never smaller than the thumbnail it came from.
    shown = viewer.locator("img.viewer-media").bounding_box()
    assert shown["width"] >= tile.locator("img").bounding_box()["width"]
    viewer.get_by_role("button", name="Copy link").click()
    expect(viewer.get_by_role("button", name="Link copied")).to_be_visible()
    link = ui.page.evaluate("navigator.clipboard.readText()")
    assert "task=" in link and link.startswith(ui_stack.base), link
    ui.page.keyboard.press("Escape")
    # A copied link opens the task on a fresh page.
    ui.page.goto(link)
    expect(card(ui).locator(".card-title")).to_contain_text("comet")
    done_image(card(ui))


def test_no_status_region_announces_more_than_once_per_stage(ui, ui_stack):
    ui_stack.runner.pause()
    ui_stack.runner.pace_s = 0.2
    open_page(ui, ui_stack, "?user=quiet-user")
    ui.page.evaluate(ANNOUNCED)
    generate(ui, "glacier")
    expect(card(ui).locator(".status")).to_contain_text(re.compile(r"Waiting in line for [3-9] s"), timeout=15_000)
    ui_stack.runner.resume()
    done_image(card(ui))
    said = ui.page.evaluate("window.__said")
    assert len(said) == len(set(said)), said  # each stage once: the clock never speaks
    assert said[-1].endswith("Done") and any("Waiting in line" in s for s in said), said
    assert len(said) <= 8, said


def test_focus_stays_on_the_acted_on_card(ui, ui_stack):
    open_page(ui, ui_stack, "?user=focus-user")
    generate(ui, "meteor")
    done_image(card(ui))
    task = card(ui).get_attribute("data-task")
    on_card = f"document.activeElement.closest('#tasks > li')?.dataset.task === {task!r}"
    source = ui.page.locator(f'#tasks > li[data-task="{task}"]')
    for name in ("Mark seen", "Download image", "Make a GIF"):
        source.get_by_role("button", name=name).click()
        if name == "Download image":
            expect(ui.page.locator("#viewer")).to_be_visible()
            ui.page.keyboard.press("Escape")
        assert ui.page.evaluate(on_card), f"focus left the card after {name}"
    done_image(card(ui))  # the GIF
    assert ui.page.evaluate(on_card), "focus left the card when the GIF arrived"
    ui_stack.runner.pause()
    generate(ui, "moth")
    moth = ui.page.locator("#tasks > li", has_text="moth")
    moth.get_by_role("button", name="Cancel").click()
    expect(moth).to_have_attribute("data-status", "canceled")
    assert ui.page.evaluate("document.activeElement.closest('#tasks > li')?.textContent.includes('moth')")


def test_phone_targets_are_at_least_44px(browser, ui_stack):
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    page = context.new_page()
    try:
        ui_stack.runner.resume()
        page.goto(f"{ui_stack.base}/?user=phone-user")
        expect(page.locator("#generate")).to_be_enabled()
        page.fill("#cue", "paper kite over the dunes")
        page.click("#generate")
        expect(page.locator("#tasks > li .result img")).to_be_visible(timeout=60_000)
        expect(page.locator("#gallery > li")).to_have_count(1)
        small = page.evaluate("""() => [...document.querySelectorAll(
            "button, a, input, select, textarea, summary")].filter(el => {
              const r = el.getBoundingClientRect();
              return r.width > 0 && r.height > 0 && r.left >= 0 && getComputedStyle(el).visibility !== "hidden";
            }).filter(el => el.getBoundingClientRect().height < 44)
              .map(el => `${el.tagName} ${el.id || el.textContent.trim().slice(0, 30)} `
                         + el.getBoundingClientRect().height)""")
        assert small == [], small
        # The new card comes into view: its actions are on screen without scrolling back.
        box = page.locator("#tasks > li").first.bounding_box()
        assert box["y"] < 844, box
    finally:
        context.close()
        ui_stack.runner.pause()


def test_previews_from_the_real_stream_show_in_the_card_before_the_result(ui, ui_stack):
    ui_stack.runner.pace_s = 0.3
    open_page(ui, ui_stack, "?user=live-preview-user&soul=mira")
    ui.page.evaluate(RECORD)
    generate(ui, "umbrella in the rain")
    step = card(ui).locator(".preview-step")
    expect(step).to_have_text(re.compile(r"Step \d+ of \d+"), timeout=90_000)
    expect(card(ui).locator("img.preview")).to_be_visible()
    assert card(ui).get_attribute("data-status") == "running"
    expect(card(ui)).to_have_attribute("data-via", "events")
    ui.shot("live-preview")
    done_image(card(ui))


def test_preview_images_show_in_the_card_while_it_renders(ui, ui_stack):
    """The `preview` event's handler ({task_id, step, steps, url}) fed through the card's own listener: an older
    step never replaces a newer one, and the result replaces the preview."""
    ui_stack.runner.pace_s = 0.3
    open_page(ui, ui_stack, "?user=preview-user")
    generate(ui, "lighthouse at dusk")
    expect(card(ui)).to_have_attribute("data-status", "running", timeout=90_000)
    ui.page.evaluate("""() => {
      const li = document.querySelector("#tasks > li");
      const c = document.createElement("canvas"); c.width = c.height = 8;
      const g = c.getContext("2d"); g.fillStyle = "#c33"; g.fillRect(0, 0, 8, 8);
      const send = (step, url) => li.dispatchEvent(new CustomEvent("soul-preview",
        {detail: {task_id: li.dataset.task, step, steps: 1000, url}}));
      // (beyond the real previews' steps, so that none of them replaces it)
      send(999, c.toDataURL()); send(2, "data:image/png;base64,AAAA");  // a late, older step is ignored
    }""")
    preview = card(ui).locator("img.preview")
    expect(preview).to_be_visible()
    expect(card(ui).locator(".preview-step")).to_have_text("Step 999 of 1000")
    assert preview.get_attribute("src").startswith("data:image/png;base64,iVBOR")
    ui.shot("preview")
    done_image(card(ui))
    expect(card(ui).locator("img.preview")).to_have_count(0)  # the result replaces it


def test_offline_is_said_at_once_and_the_clock_stops(ui, ui_stack):
    ui.allowed.append(FAILED_LOAD)
    ui.allowed.append("ERR_INTERNET_DISCONNECTED")
    ui_stack.runner.pause()
    open_page(ui, ui_stack, "?user=offline-user")
    generate(ui, "harbour lights")
    expect(card(ui).locator(".status")).to_contain_text("Waiting in line")
    ui.page.context.set_offline(True)
    expect(ui.page.locator("#offline")).to_be_visible(timeout=2_000)
    expect(card(ui).locator(".trouble")).to_be_visible(timeout=3_000)
    line = card(ui).locator(".status")
    expect(line).to_contain_text("cannot be reached")
    before = line.inner_text()
    ui.page.wait_for_timeout(2_200)
    assert line.inner_text() == before and "waiting for a runner" not in before, before
    ui.shot("offline")
    ui.page.context.set_offline(False)
    ui_stack.runner.resume()
    done_image(card(ui))
    expect(ui.page.locator("#offline")).to_be_hidden()
    expect(card(ui).locator(".trouble")).to_be_hidden()


def test_shortcuts_tiny_notice_seeds_and_dark_mode(ui, ui_stack):
    open_page(ui, ui_stack, "?user=keys-user")
    ui.page.fill("#cue", "cactus in bloom at noon")
    ui.page.focus("#user")
    ui.page.keyboard.press("Control+Enter")
    done_image(card(ui))
    # The tiny offline model says that its pictures are noise by design.
    expect(ui.page.locator("#tiny-note")).to_be_visible()
    # Vary and Reuse seed only where the API pins seeds (the `seed` field of POST /image).
    doc = ui.page.evaluate("fetch('openapi.json').then(r => r.json())")
    body = doc["paths"]["/image"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    name = body.get("$ref", "").split("/")[-1]
    pins = "seed" in (doc["components"]["schemas"].get(name, body).get("properties") or {})
    expect(card(ui).get_by_role("button", name="Vary")).to_have_count(1 if pins else 0)
    expect(card(ui).get_by_role("button", name="Reuse seed")).to_have_count(1 if pins else 0)
    ui.page.keyboard.press("Escape")
    ui.page.locator("body").click(position={"x": 1, "y": 1})
    ui.page.keyboard.press("/")
    expect(ui.page.locator("#cue")).to_be_focused()
    # The portrait of the character is its latest picture.
    atlas = ui.page.locator('#styles [data-soul="atlas"] img.portrait')
    expect(atlas).to_be_visible()
    ui.page.emulate_media(color_scheme="dark")
    rgb = ui.page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert sum(int(x) for x in re.findall(r"\d+", rgb)[:3]) < 150, rgb
    ui.page.emulate_media(color_scheme="light")
    rgb = ui.page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert sum(int(x) for x in re.findall(r"\d+", rgb)[:3]) > 600, rgb
