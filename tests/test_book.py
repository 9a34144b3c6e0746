"""`make book`: the stored notebooks as a static HTML site, opened in a real (headless) browser."""
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from parbp import book
from browser import chromium, find_browser


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    index = book.build(out, source="stored")
    return index.parent


def test_every_notebook_has_a_page_and_a_contents_entry(site):
    stored = sorted(p.stem for p in book.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    assert sorted(p.stem for p in site.glob("[0-9][0-9]_*.html")) == stored
    index = (site / "index.html").read_text()
    for stem in stored:
        assert f'href="{stem}.html"' in index


def test_nothing_is_fetched_from_the_network(site):
    for page in site.glob("*.html"):
        remote = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(https?:)?//[^"]*', page.read_text())
        assert not remote, f"{page.name} loads {remote}"


def test_bad_source_is_refused():
    with pytest.raises(ValueError, match="choose one of"):
        book.sources("nowhere")


def _ids(page: Path) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', page.read_text()))


def test_pages_load_images_decode_and_links_resolve(site):
    find_browser()  # skips, with the reason, before selenium is imported
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    pages = sorted(site.glob("*.html"))
    checked_images = 0
    with chromium() as driver:
        for page in pages:
            driver.get(page.as_uri())
            WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.readyState") == "complete",
                                            f"{page.name} did not finish loading in 60 s")
            assert driver.title, f"{page.name} has no title"
            # every <img> has loaded and decoded (a broken or missing image has naturalWidth 0)
            not_decoded = ("return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                           ".map(i => (i.getAttribute('src') || '').slice(0, 80))")
            try:
                WebDriverWait(driver, 30).until(lambda d: not d.execute_script(not_decoded))
            except TimeoutException:
                pass
            broken = driver.execute_script(not_decoded)
            assert not broken, f"{page.name}: images not decoded: {broken}"
            checked_images += driver.execute_script("return document.images.length")
            if page.stem[:2].isdigit():
                # MathJax is served from the book itself and has run
                assert driver.execute_script("return typeof window.MathJax !== 'undefined'"), page.name
            # nothing the page asks for is missing (MathJax's probe of an about:blank font is not a file)
            failed = [m for m in (e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE")
                      if "Failed to load resource" in m and not m.startswith("about:")]
            assert not failed, f"{page.name}: {failed}"
            # internal links: the target file exists, and so does the anchor in it
            hrefs = driver.execute_script("return Array.from(document.links).map(a => a.href)")
            for href in hrefs:
                parts = urlsplit(href)
                if parts.scheme != "file":
                    continue
                target = Path(unquote(parts.path))
                assert target.exists(), f"{page.name} links to missing {target.name}"
                if parts.fragment and target.suffix == ".html":
                    # a browser matches the fragment as written, then percent-decoded (nbconvert writes encoded ids)
                    ids = _ids(target)
                    assert parts.fragment in ids or unquote(parts.fragment) in ids, \
                        f"{page.name}: no #{parts.fragment} in {target.name}"
    assert checked_images >= len(list(book.FIGURES.glob("*.png")))  # the gallery alone shows every figure


def test_executed_copies_replace_their_stored_notebook(tmp_path, monkeypatch):
    import shutil

    shutil.copy(book.NOTEBOOKS / "05_speedup.ipynb", tmp_path / "05_speedup_1.ipynb")
    shutil.copy(book.NOTEBOOKS / "05_speedup.ipynb", tmp_path / "05_speedup_2.ipynb")
    monkeypatch.setattr(book, "EXECUTED", tmp_path)
    chosen = book.sources("auto")
    assert [p.name for p in chosen if p.name.startswith("05")] == ["05_speedup_1.ipynb", "05_speedup_2.ipynb"]
    assert all(p.parent == book.NOTEBOOKS for p in chosen if not p.name.startswith("05"))
    assert [p.name for p in book.sources("executed")] == ["05_speedup_1.ipynb", "05_speedup_2.ipynb"]
