"""The web page's files as the `api` function serves them: an exact allow-list under /ui/ (no caller path reaches
the filesystem), correct content types, revalidation by ETag, a favicon, and public even when keys are required."""

from __future__ import annotations

import pytest

from functions.http import webpage


@pytest.mark.parametrize("name", sorted(webpage.ASSETS))
def test_every_listed_file_is_served_with_its_type_and_revalidates(api_app, name):
    client = api_app.test_client()
    answer = client.get(f"/ui/{name}")
    assert answer.status_code == 200 and answer.data
    assert answer.headers["Content-Type"] == webpage.ASSETS[name][1]
    assert answer.headers["Cache-Control"] == "no-cache" and answer.headers["X-Content-Type-Options"] == "nosniff"
    again = client.get(f"/ui/{name}", headers={"If-None-Match": answer.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""


def test_the_favicon_and_the_pages(api_app):
    client = api_app.test_client()
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["Content-Type"] == "image/x-icon" and icon.data[:4] == b"\0\0\1\0"
    for path in ("/", "/docs"):
        page = client.get(path)
        assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
        html = page.get_data(as_text=True)
        # The CSP allows no inline code: scripts and styles are files, and no element has an event handler.
        assert "<script>" not in html and "<style" not in html and " onclick=" not in html
        assert 'src="ui/' in html and 'href="ui/' in html


@pytest.mark.parametrize(
    "path",
    ["/ui/app.py", "/ui/../app.py", "/ui/%2e%2e%2fapp.py", "/ui/..%2Fsettings.py", "/ui/index.html", "/ui/",
     "/ui/APP.JS", "/ui/app.js.map", "/ui/ui/app.js", "/ui/places.json"],
)
def test_nothing_outside_the_allow_list(api_app, path):
    answer = api_app.test_client().get(path)
    assert answer.status_code == 404
    assert answer.json["error"]["code"] == "not_found"


def test_the_selfie_options_come_from_the_catalog(api_app):
    answer = api_app.test_client().get("/image/selfie/options").json
    assert {"key": "paris", "name": "Paris"} in answer["cities"]
    assert answer["moods"] == ["happy", "calm", "adventurous"]
