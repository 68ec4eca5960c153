"""The built book in a real browser: Debian's Chromium, driven by Playwright, with no network.

The book is built once per session (quick profile, strict; ``conftest.built_book``) and served
from 127.0.0.1 on a free port. Every page is opened once (``visit``), which collects what the
checks below need and saves screenshots (desktop and phone width) under ``_build/screenshots/``
(or ``$SHENDU_SCREENSHOTS``). Any request that would leave 127.0.0.1 (or the disk, for a page
opened from a file) is aborted and reported.

The checker functions (``*_problems``) are also run against a copy of the site with planted
faults (a broken image, broken links, a removed output, an unrendered widget, a remote script),
which they must catch; a planted failing cell is caught by the build (tests/test_book.py).

Needs ``chromium`` (apt-get install chromium) and ``playwright`` (the dev extra); Playwright
never downloads a browser here: it drives /usr/bin/chromium (or $SHENDU_CHROMIUM).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

import pytest
from browsing import PHONE, Browser, serve
from conftest import (
    ROOT,
    executed_entries,
    launch_targets,
    toc_entries,
    toc_notebooks,
)

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SCREENSHOTS = Path(os.environ.get("SHENDU_SCREENSHOTS", ROOT / "_build" / "screenshots"))
PAGES = [*(f"{entry}.html" for entry in toc_entries()), "genindex.html", "search.html"]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key == "id" or (tag == "a" and key == "name"):
                self.ids.add(value)


class LinkFetcher:
    """GETs same-origin URLs (no proxy), caching each page's status and element ids."""

    def __init__(self):
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.cache: dict[str, tuple[int, set[str]]] = {}

    def get(self, url: str) -> tuple[int, set[str]]:
        if url not in self.cache:
            try:
                with self.opener.open(url, timeout=10) as resp:
                    status, body = resp.status, resp.read()
                    kind = resp.headers.get("Content-Type", "")
            except urllib.error.HTTPError as exc:
                status, body, kind = exc.code, b"", ""
            ids = set()
            if "html" in kind:
                parser = _Ids()
                parser.feed(body.decode("utf8", "replace"))
                ids = parser.ids
            self.cache[url] = (status, ids)
        return self.cache[url]


# --------------------------------------------------------------------------- visiting a page
@dataclass
class Visit:
    """What one page showed: everything the checks need, collected in one visit."""

    url: str
    status: int | None = None
    final_url: str = ""
    console: list[str] = field(default_factory=list)
    bad_responses: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    scripts: list[str] = field(default_factory=list)
    cells: list[bool] = field(default_factory=list)
    widgets: list[dict] = field(default_factory=list)
    math: dict = field(default_factory=dict)
    copy: dict = field(default_factory=dict)
    phone: dict = field(default_factory=dict)
    screenshots: list[Path] = field(default_factory=list)


_SETTLE_JS = """async () => {
  for (const img of document.images) img.loading = "eager";
  await Promise.all([...document.images].map(img => img.complete ? null : new Promise(done => {
    img.addEventListener("load", done); img.addEventListener("error", done);
    setTimeout(done, 10000);
  })));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
}"""

_FACTS_JS = """() => ({
  images: [...document.images].map(i => ({src: i.currentSrc || i.src, width: i.naturalWidth,
                                         complete: i.complete})),
  links: [...document.querySelectorAll("a[href]")].map(a => a.href),
  scripts: [...document.scripts].map(s => s.src).filter(Boolean),
  cells: [...document.querySelectorAll("div.cell")].map(c => {
    const out = c.querySelector(":scope > .cell_output");
    return !!out && out.children.length > 0 && out.getBoundingClientRect().height > 0;
  }),
  widgets: [...document.querySelectorAll('script[type="%(view)s"]')].map(s => {
    const area = s.previousElementSibling;
    const ok = !!area && area.classList.contains("widget-subarea");
    const box = ok ? area.getBoundingClientRect() : {width: 0, height: 0};
    let model = null; try { model = JSON.parse(s.textContent).model_id; } catch (e) {}
    return {model, rendered: ok && area.children.length > 0 && box.width > 0 && box.height > 0,
            text: ok ? area.innerText.trim().slice(0, 80) : ""};
  }),
  copy: {blocks: document.querySelectorAll("div.highlight pre").length,
         buttons: document.querySelectorAll("button.copybtn").length},
  math: {total: document.querySelectorAll("span.math, div.math").length,
         rendered: [...document.querySelectorAll("span.math, div.math")]
                     .filter(m => m.querySelector("mjx-container")).length},
})""" % {"view": WIDGET_VIEW}

_WIDGETS_RENDERED_JS = """() =>
  document.querySelectorAll('script[type="%s"]').length === 0 ? 0 :
  [...document.querySelectorAll(".widget-subarea")].filter(a => a.children.length > 0).length""" % WIDGET_VIEW


def _wait_for_widgets(page, expected: int, timeout: float = 20.0, stable: float = 4.0):
    """Until every widget view is rendered, or the count stops changing for `stable` s."""
    start = last_change = time.monotonic()
    last = -1
    while time.monotonic() - start < timeout:
        count = page.evaluate(_WIDGETS_RENDERED_JS)
        if count >= expected:
            return
        if count != last:
            last, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > stable:
            return
        page.wait_for_timeout(250)


def screenshot_name(url: str) -> str:
    path = urlsplit(url).path.strip("/") or "index"
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", path.removesuffix(".html"))


def visit(browser: Browser, url: str, shots: Path | None = SCREENSHOTS) -> Visit:
    """Open one page at desktop width, then at phone width; collect what the checks need."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    v = Visit(url)
    page = browser.context.new_page()
    page.on("console", lambda m: v.console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: v.console.append(f"uncaught exception: {e}"))
    page.on("requestfailed", lambda r: v.bad_responses.append(f"{r.url} ({r.failure})"))
    page.on("response", lambda r: v.bad_responses.append(f"{r.url} (HTTP {r.status})")
            if r.status >= 400 else None)
    blocked_before = len(browser.blocked)
    try:
        response = page.goto(url, wait_until="load", timeout=30_000)
        v.status = response.status if response else None
        try:
            page.wait_for_load_state("networkidle", timeout=15_000)
        except PlaywrightTimeout:
            v.console.append("the page kept loading for 15 s")
        page.evaluate(_SETTLE_JS)
        views = page.locator(f'script[type="{WIDGET_VIEW}"]').count()
        if views:
            _wait_for_widgets(page, views)
        v.final_url = page.url
        facts = page.evaluate(_FACTS_JS)
        for key in ("images", "links", "scripts", "cells", "widgets", "math", "copy"):
            setattr(v, key, facts[key])
        name = screenshot_name(url)
        if shots is not None:
            shots.mkdir(parents=True, exist_ok=True)
            v.screenshots.append(shots / f"{name}.png")
            page.screenshot(path=v.screenshots[-1], full_page=True)
        page.set_viewport_size(PHONE)
        page.wait_for_timeout(300)
        v.phone = page.evaluate("() => ({scrollWidth: document.scrollingElement.scrollWidth,"
                                " innerWidth: window.innerWidth})")
        if shots is not None:
            v.screenshots.append(shots / f"{name}.phone.png")
            page.screenshot(path=v.screenshots[-1], full_page=False)
    finally:
        page.close()
    v.external = browser.blocked[blocked_before:]
    return v


# --------------------------------------------------------------------------- the checks
def load_problems(v: Visit) -> list[str]:
    problems = [] if v.status == 200 else [f"HTTP {v.status} for {v.url}"]
    problems += [f"console error: {m}" for m in v.console]
    problems += [f"failed request: {r}" for r in v.bad_responses]
    return problems


def network_problems(v: Visit) -> list[str]:
    return [f"request to another host (aborted): {u}" for u in v.external]


def image_problems(v: Visit) -> list[str]:
    return [f"image not loaded: {img['src']}" for img in v.images
            if not img["complete"] or img["width"] == 0]


def link_problems(v: Visit, fetcher: LinkFetcher) -> list[str]:
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(v.final_url or v.url))
    problems = []
    for href in dict.fromkeys(v.links):  # in order, once each
        if not href.startswith(origin + "/"):
            continue  # another host (a link, never loaded), javascript:, mailto:
        target, fragment = urldefrag(href)
        status, ids = fetcher.get(target)
        if status != 200:
            problems.append(f"broken link: {href} (HTTP {status})")
        elif fragment and unquote(fragment) not in ids:
            problems.append(f"broken anchor: {href} (no id {unquote(fragment)!r} there)")
    return problems


def phone_problems(v: Visit) -> list[str]:
    if v.phone.get("scrollWidth", 0) <= v.phone.get("innerWidth", 0) + 1:
        return []
    return [f"scrolls sideways at {PHONE['width']} px: content is {v.phone['scrollWidth']} px wide"]


def math_problems(v: Visit) -> list[str]:
    missing = v.math.get("total", 0) - v.math.get("rendered", 0)
    return [f"{missing} of {v.math['total']} formulas not typeset by MathJax"] if missing else []


def expected_outputs(executed: dict) -> list[bool]:
    """For each code cell the page shows, whether it must show an output area."""
    shown = []
    for cell in executed["cells"]:
        if cell["cell_type"] != "code":
            continue
        tags = set(cell.get("metadata", {}).get("tags", []))
        if "remove-cell" in tags or {"remove-input", "remove-output"} <= tags:
            continue
        shown.append(bool(cell.get("outputs")) and "remove-output" not in tags)
    return shown


def expected_widget_views(executed: dict) -> list[str]:
    """Model ids of the widget views the page must render (those whose state was saved)."""
    state = executed.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    views = []
    for cell in executed["cells"]:
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            if view and view.get("model_id") in state:
                views.append(view["model_id"])
    return views


def output_problems(v: Visit, executed: dict) -> list[str]:
    want = expected_outputs(executed)
    if len(v.cells) != len(want):
        return [f"the page shows {len(v.cells)} code cells, the notebook has {len(want)}"]
    return [f"code cell {i + 1}: output {'missing' if w else 'unexpected'}"
            for i, (w, got) in enumerate(zip(want, v.cells)) if w and not got]


def widget_problems(v: Visit, executed: dict) -> list[str]:
    want = expected_widget_views(executed)
    problems = []
    if len(v.widgets) != len(want):
        problems.append(f"{len(v.widgets)} widget views on the page, {len(want)} in the notebook")
    problems += [f"widget {w['model']} not rendered (empty placeholder)"
                 for w in v.widgets if not w["rendered"]]
    if v.widgets:
        origin = "{0.scheme}://{0.netloc}/".format(urlsplit(v.final_url or v.url))
        for needed in ("vendor/requirejs/require.js", "vendor/html-manager/require-paths.js",
                       "vendor/anywidget/require-paths.js", "vendor/html-manager/embed-amd.js"):
            if not any(s.startswith(origin) and urlsplit(s).path.endswith(needed)
                       for s in v.scripts):
                problems.append(f"widget manager script {needed} not loaded from this site")
    return problems


# --------------------------------------------------------------------------- per page
@pytest.fixture(scope="session")
def visits(browser, site):
    cache: dict[str, Visit] = {}

    def get(page: str) -> Visit:
        if page not in cache:
            cache[page] = visit(browser, f"{site}/{page}")
        return cache[page]

    return get


@pytest.fixture(scope="session")
def fetcher():
    return LinkFetcher()


def executed_notebook(site_dir: Path, entry: str) -> dict:
    """The notebook as executed for this build: from the execution cache (MyST-NB writes
    jupyter_execute/ without outputs when it takes them from the cache), else, for a page
    executed in `force` mode, from jupyter_execute/."""
    from jupyter_cache import get_cache

    cache_dir = site_dir.parent / ".jupyter_cache" / "quick"
    if cache_dir.is_dir():
        records = [r for r in get_cache(cache_dir).list_cache_records()
                   if Path(r.uri).as_posix().endswith(f"/{entry}.md")]
        if records:
            latest = max(records, key=lambda r: r.created)
            return json.loads(json.dumps(get_cache(cache_dir).get_cache_bundle(latest.pk).nb))
    path = site_dir.parent / "jupyter_execute" / f"{entry}.ipynb"
    assert path.is_file(), f"{entry} was not executed by the build ({path} missing)"
    return json.loads(path.read_text("utf8"))


@pytest.mark.parametrize("page", PAGES)
def test_page_loads_cleanly(visits, page):
    v = visits(page)
    problems = load_problems(v) + network_problems(v)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES)
def test_images_load(visits, page):
    v = visits(page)
    assert v.images, f"{page}: no image at all (the logo is on every page)"
    assert not image_problems(v), "\n".join(image_problems(v))


@pytest.mark.parametrize("page", PAGES)
def test_internal_links_resolve(visits, fetcher, page):
    problems = link_problems(visits(page), fetcher)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES)
def test_readable_at_phone_width(visits, page):
    assert not phone_problems(visits(page)), phone_problems(visits(page))


@pytest.mark.parametrize("page", PAGES)
def test_math_is_typeset_offline(visits, page):
    assert not math_problems(visits(page)), math_problems(visits(page))


@pytest.mark.parametrize("page", PAGES)
def test_code_blocks_have_copy_buttons(visits, page):
    copy = visits(page).copy
    assert copy["buttons"] >= copy["blocks"], f"{page}: {copy}"


@pytest.mark.parametrize("entry", executed_entries())
def test_code_outputs_present(visits, site_dir, entry):
    executed = executed_notebook(site_dir, entry)
    v = visits(f"{entry}.html")
    assert any(expected_outputs(executed)), f"{entry}: the notebook produced no output at all"
    assert not output_problems(v, executed), "\n".join(output_problems(v, executed))


@pytest.mark.parametrize("entry", executed_entries())
def test_widgets_rendered(visits, site_dir, entry):
    """Every widget view that the notebook saved is rendered (not an empty placeholder) by
    the vendored widget manager; a page whose notebook has none must show none."""
    executed = executed_notebook(site_dir, entry)
    v = visits(f"{entry}.html")
    assert not widget_problems(v, executed), "\n".join(widget_problems(v, executed))


def test_some_page_has_widgets(visits, site_dir):
    """The widget path is exercised: at least one chapter renders widgets (its progress bars)."""
    with_widgets = [e for e in executed_entries()
                    if expected_widget_views(executed_notebook(site_dir, e))]
    assert with_widgets, "no notebook saved widget state: widget rendering is untested"
    assert all(visits(f"{e}.html").widgets for e in with_widgets)


@pytest.mark.parametrize("entry", toc_entries())
def test_launch_buttons_open_existing_notebooks(visits, entry):
    v = visits(f"{entry}.html")
    targets = launch_targets(v.links)
    if entry in toc_notebooks():
        assert set(targets) == {"Colab", "Binder"}, f"{entry}: launch buttons {targets}"
        for where, path in targets.items():
            assert path.endswith(".ipynb") and (ROOT / path).is_file(), (
                f"{entry}: {where} opens {path}, which is not a notebook in the repository")
    else:
        assert not targets, f"{entry} has no notebook to launch, yet links {targets}"


def test_search_finds_receptive_field(browser, site):
    page = browser.context.new_page()
    try:
        page.goto(f"{site}/search.html?q=receptive+field", wait_until="load")
        page.wait_for_selector("#search-results ul.search li a", timeout=20_000)
        hits = page.eval_on_selector_all("#search-results ul.search li a",
                                         "links => links.map(a => a.href)")
    finally:
        page.close()
    assert any("book/glossary.html" in h for h in hits), hits


def test_index_redirects_to_the_first_page(browser, site):
    page = browser.context.new_page()
    try:
        page.goto(f"{site}/index.html")
        page.wait_for_url("**/book/intro.html", timeout=10_000)
    finally:
        page.close()


def test_every_page_is_checked(site_dir):
    skip = {"_static", "_sources", "_images", "reports", "_sphinx_design_static"}
    built = {p.relative_to(site_dir).as_posix() for p in site_dir.rglob("*.html")
             if not skip & set(p.relative_to(site_dir).parts)}
    assert built - {"index.html"} <= set(PAGES), f"pages no test opens: {built - set(PAGES)}"


def test_screenshots_saved(visits):
    for page in PAGES:
        for shot in visits(page).screenshots:
            assert shot.is_file() and shot.stat().st_size > 1000, shot


# --------------------------------------------------------------------------- planted faults
PLANTED_GLOSSARY = (
    '<p id="planted">'
    '<img src="../_images/planted-missing.png" alt="planted">'
    '<a href="planted-missing-page.html">a page that is not there</a> '
    '<a href="intro.html#planted-missing-anchor">an anchor that is not there</a>'
    '<script src="https://cdn.planted.invalid/remote.js"></script></p>'
)


def _plant(site_dir: Path, dest: Path, entry: str) -> Path:
    shutil.copytree(site_dir, dest)
    glossary = dest / "book" / "glossary.html"
    text = glossary.read_text("utf8")
    assert "</article>" in text
    glossary.write_text(text.replace("</article>", PLANTED_GLOSSARY + "</article>", 1), "utf8")
    chapter = dest / f"{entry}.html"
    text = chapter.read_text("utf8")
    # remove the first output area (its contents stay, the area is emptied) ...
    text, n = re.subn(r'(<div class="cell_output docutils container">)', r"\1<!--planted-->"
                      r'</div><div class="planted-emptied" hidden>', text, count=1)
    assert n == 1
    # ... and add a widget view whose model was never saved: an empty placeholder
    view = json.dumps({"version_major": 2, "version_minor": 0, "model_id": "planted0000"})
    text = text.replace("</article>", f'<div><script type="{WIDGET_VIEW}">{view}</script></div>'
                        "</article>", 1)
    chapter.write_text(text, "utf8")
    return dest


def test_checkers_catch_planted_faults(browser, site_dir, tmp_path):
    entry = next(e for e in toc_notebooks()
                 if expected_widget_views(executed_notebook(site_dir, e)))
    planted = _plant(site_dir, tmp_path / "html", entry)
    with serve(planted) as base:
        glossary = visit(browser, f"{base}/book/glossary.html", shots=tmp_path / "shots")
        chapter = visit(browser, f"{base}/{entry}.html", shots=tmp_path / "shots")
        fetcher = LinkFetcher()
        links = link_problems(glossary, fetcher)
    images = image_problems(glossary)
    assert any("planted-missing.png" in p for p in images), images
    assert any("planted-missing.png" in p for p in load_problems(glossary)), load_problems(glossary)
    assert any("planted-missing-page.html" in p and "HTTP 404" in p for p in links), links
    assert any("planted-missing-anchor" in p for p in links), links
    assert any("cdn.planted.invalid" in p for p in network_problems(glossary)), glossary.external
    executed = executed_notebook(site_dir, entry)
    assert any("output missing" in p for p in output_problems(chapter, executed)), chapter.cells
    problems = widget_problems(chapter, executed)
    assert any("planted0000 not rendered" in p for p in problems), problems
