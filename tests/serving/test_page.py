"""The web page at / in a real browser (Playwright driving Debian's chromium): give the token,
search, add two items to the history, see the recommendations the API gives, rank them, and take
a screenshot into the test's temp folder."""

import importlib.util
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from genrec import Recommender

from .conftest import SERVE_MISSING, SKIP_REASON

CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium", shutil.which("chromium-browser")) if p and Path(p).exists()), None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

if SERVE_MISSING:
    pytest.skip(SKIP_REASON, allow_module_level=True)
if importlib.util.find_spec("playwright") is None:
    pytest.skip("playwright is not installed (pip install playwright; .ci/run does)", allow_module_level=True)
if CHROMIUM is None:
    pytest.skip("no chromium browser on this machine (apt-get install chromium; .ci/run does)", allow_module_level=True)

import uvicorn  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from .client import make_app  # noqa: E402


def _serve(app):
    """``app`` on a free localhost port: yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def server(checkpoints):
    """The service over the unified checkpoint (titles, token ``t``) on a free localhost port."""
    yield from _serve(make_app(checkpoints["unified"], token="t", metadata=str(checkpoints["metadata"])))


@pytest.fixture
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_page_search_history_recommendations_and_ranking(server, browser, checkpoints, tmp_path):
    rec = Recommender.load(checkpoints["unified"])
    errors = []
    page = browser.new_page(viewport={"width": 1280, "height": 760})
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.wait_for_selector("#token-box", state="visible")  # the API said 401
    page.fill("#token", "t")
    page.dispatch_event("#token", "change")
    page.wait_for_selector("#results li")
    assert "unified" in page.inner_text("#model-info")

    page.fill("#search", "step 1")
    page.wait_for_selector("#results li[data-item='i12']")
    page.click("#results li[data-item='i1']")
    page.click("#results li[data-item='i12']")
    want = rec.recommend(["i1", "i12"], 10, timestamps=[0, 3600], feedback=[1, 1])  # gaps are what count
    page.wait_for_function(f"document.querySelectorAll('#recs li').length === 10 && "
                           f"document.querySelector('#recs li').dataset.item === {want[0][0]!r}")  # the answer for both items
    assert page.locator("#history li").all_inner_texts()[1].startswith("Step 12 of the walk")

    shown = [li.get_attribute("data-item") for li in page.locator("#recs li").all()]
    assert shown == [i for i, _ in want]
    assert page.locator("#recs li .title").first.inner_text().startswith("Step ")

    page.click("#use-recs")
    page.click("#rank")
    page.wait_for_function("document.querySelectorAll('#ranked tbody tr').length === 10")
    assert page.inner_text("#ranked thead").split() == ["item", "like"]
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert not errors, errors
    assert shot.stat().st_size > 10_000


def test_page_sends_the_domain_and_the_users_attributes(profiled_domains, browser):
    """A multi-domain checkpoint that reads user attributes: the page offers the domains and one
    choice per attribute field, and its recommendations are the Recommender's for them."""
    rec = Recommender.load(profiled_domains)
    errors = []
    gen = _serve(make_app(profiled_domains))
    url = next(gen)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_selector("#domain-box", state="visible")
        assert page.locator("#domain option").all_inner_texts() == ["beauty", "toys"]
        page.select_option("#domain", "toys")
        page.select_option("#profile select[data-field='group']", "group=odd")
        page.fill("#search", "a3")
        page.click("#results li[data-item='beauty:a3']")  # context from the other domain
        page.fill("#search", "b4")
        page.click("#results li[data-item='toys:b4']")
        want = [i for i, _ in rec.recommend(["beauty:a3", "toys:b4"], 10, timestamps=[0, 3600], domain="toys",
                                             user_attributes=["group=odd"])]
        assert len(want) == 10 and all(i.startswith("toys:") for i in want)
        page.wait_for_function(f"document.querySelectorAll('#recs li').length === 10 && "
                               f"document.querySelector('#recs li').dataset.item === {want[0]!r}")
        assert [li.get_attribute("data-item") for li in page.locator("#recs li").all()] == want
        page.select_option("#profile select[data-field='group']", "")  # attributes left out
        plain = [i for i, _ in rec.recommend(["beauty:a3", "toys:b4"], 10, timestamps=[0, 3600], domain="toys")]
        page.wait_for_function(f"document.querySelector('#recs li').dataset.item === {plain[0]!r}")
        assert [li.get_attribute("data-item") for li in page.locator("#recs li").all()] == plain
    finally:
        next(gen, None)
    assert not errors, errors


def test_page_reads_ratings_for_a_like_and_rating_model(checkpoints, browser):
    """A checkpoint whose tasks are like and the rating: each history item carries a rating (5 when
    added; a click steps it down), the page sends the ratings, and the ranked table has both tasks."""
    rec = Recommender.load(checkpoints["rated"])
    for url in _serve(make_app(checkpoints["rated"], metadata=str(checkpoints["metadata"]))):
        errors = []
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_selector("#results li")
        page.fill("#search", "step 1")
        page.wait_for_selector("#results li[data-item='i12']")
        page.click("#results li[data-item='i1']")
        page.click("#results li[data-item='i12']")
        assert page.locator("#history .fb").all_inner_texts() == ["rated 5", "rated 5"]
        page.locator("#history .fb").nth(1).click()
        page.locator("#history .fb").nth(1).click()
        assert page.locator("#history .fb").all_inner_texts() == ["rated 5", "rated 3"]
        want = rec.recommend(["i1", "i12"], 10, timestamps=[0, 3600], feedback=[5, 3])
        ids = json.dumps([i for i, _ in want], separators=(",", ":"))  # the whole list: the answer for (5, 5) may share its first item
        page.wait_for_function(f"JSON.stringify([...document.querySelectorAll('#recs li')].map((li) => li.dataset.item)) === {ids!r}")
        page.click("#use-recs")
        page.click("#rank")
        page.wait_for_function("document.querySelectorAll('#ranked tbody tr').length === 10")
        assert page.inner_text("#ranked thead").split() == ["item", "like", "rating"]
        assert not errors, errors
