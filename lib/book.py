"""The study as a book: every notebook rendered to static HTML, an index page with a table of contents,
and a gallery of the committed figures. Works offline.

    python -m parbp.book                     # build/book/index.html from the last `make study`
    python -m parbp.book --source stored     # from the notebooks as stored in notebooks/ only

nbconvert, not Jupyter Book: the notebooks are already executed, so rendering is all, with what JupyterLab
installs; a local MathJax and no CDN scripts let the pages load nothing from the network. Output figures are
embedded as data URIs; the gallery copies ``figures/``' PNGs beside the pages.
"""
from __future__ import annotations

import html
import re
import shutil
import sys
from pathlib import Path

from .cli import Parser, check_choice, run
from .results import BUILD, FIGURES, NOTEBOOKS, ROOT
from .study import EXECUTED, notebooks as numbered

OUT = BUILD / "book"
SOURCES = ("auto", "executed", "stored")

# The lab template, minus everything it would fetch from a CDN (require.js, the widget manager), plus a
# navigation bar. Widget outputs fall back to their text; MathJax comes from the book's own folder, with the
# one web font that package ships (STIX-Web).
TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}
<script>window.MathJax = {"HTML-CSS": {availableFonts: ["STIX-Web"], preferredFont: "STIX-Web", webFont: "STIX-Web",
                                       imageFont: null}};</script>
{{ super() }}
{%- endblock html_head_js_mathjax -%}
{%- block body_header -%}
{{ super() }}
<style>nav.book-nav{font-family:system-ui,sans-serif;font-size:15px;padding:.6em 0;border-bottom:1px solid #ddd}
nav.book-nav a{margin-right:1.5em}</style>
<nav class="book-nav">{{ resources.book_nav }}</nav>
{%- endblock body_header -%}
{%- block body_footer -%}
<nav class="book-nav">{{ resources.book_nav }}</nav>
{{ super() }}
{%- endblock body_footer -%}
"""
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"
STYLE = """body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;line-height:1.5}
nav.book-nav{margin:1em 0;padding:.5em 0;border-bottom:1px solid #ddd}
nav.book-nav a{margin-right:1.5em}
.gallery figure{display:inline-block;width:31%;margin:1%;vertical-align:top}
.gallery img{width:100%;border:1px solid #ddd}
.gallery figcaption{font-size:.85em}"""


def sources(source: str = "auto") -> list[Path]:
    """The notebooks to render. ``auto``: each notebook's executed copies from the last study
    (``build/executed/``; 05 has one per run) where there are any, else the stored notebook."""
    check_choice("source", source, SOURCES, unknown=True)
    stored, executed = numbered(NOTEBOOKS), numbered(EXECUTED)
    if source == "executed" and not executed:
        raise FileNotFoundError(f"no executed notebooks in {EXECUTED}; run `make study` first or use --source stored")
    if source == "stored":
        return stored
    runs = {nb: [e for e in executed if re.fullmatch(rf"{re.escape(nb.stem)}(_\d+)?", e.stem)] for nb in stored}
    return [p for nb in stored for p in runs[nb] or ([] if source == "executed" else [nb])]


def title_of(nb) -> str:
    """The notebook's first Markdown heading, without the #'s."""
    return next((line.lstrip("#").strip() for cell in nb.cells if cell.cell_type == "markdown"
                 for line in cell.source.splitlines() if line.startswith("#")), "untitled")


def _run_suffix(nb, path: Path) -> str:
    """Several executed runs of one notebook (05) are told apart by their papermill parameters."""
    if not re.search(r"_\d+$", path.stem):
        return ""
    params = nb.metadata.get("papermill", {}).get("parameters", {})
    shown = {k: v for k, v in params.items() if k in ("net", "dataset", "label")} or params
    return " (" + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")"


def headings(page_html: str, level: int = 2) -> list[tuple[str, str]]:
    """(id, text) of every <hN id=...> nbconvert wrote, so the contents link to anchors that exist."""
    found = re.findall(rf'<h{level} id="([^"]+)"[^>]*>(.*?)</h{level}>', page_html, flags=re.S)
    return [(i, html.unescape(re.sub(r"<[^>]+>", "", t)).replace("¶", "").strip()) for i, t in found]


def _nav(pages: list[dict], i: int | None) -> str:
    """The links atop every page: contents, figures and (on a notebook's page) the previous and next ones."""
    links = ['<a href="index.html">Contents</a>', '<a href="gallery.html">Figures</a>']
    if i is not None and i > 0:
        links.append(f'<a href="{pages[i - 1]["file"]}">← {html.escape(pages[i - 1]["title"])}</a>')
    if i is not None and i + 1 < len(pages):
        links.append(f'<a href="{pages[i + 1]["file"]}">{html.escape(pages[i + 1]["title"])} →</a>')
    return " ".join(links)


def _page(title: str, nav: str, body: str) -> str:
    """A page of the book's own (the contents, the gallery): its navigation bar, then ``body``."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{STYLE}</style></head><body>\n<nav class="book-nav">{nav}</nav>\n{body}\n</body></html>\n')


def build(out: Path = OUT, source: str = "auto") -> Path:
    """Render the book into ``out`` and return the path of its index page."""
    import jupyter_server_mathjax
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    notebooks = sources(source)
    if not notebooks:
        raise FileNotFoundError(f"no notebooks NN_*.ipynb to render in {NOTEBOOKS} or {EXECUTED}")
    if (out := Path(out)).exists():
        shutil.rmtree(out)
    (out / "figures").mkdir(parents=True)
    shutil.copytree(Path(jupyter_server_mathjax.__file__).parent / "static", out / "mathjax")

    exporter = HTMLExporter(extra_loaders=[DictLoader({"book.html.j2": TEMPLATE})], template_file="book.html.j2",
                            embed_images=True, mathjax_url=f"mathjax/MathJax.js?config={MATHJAX_CONFIG}")
    nbs = [nbformat.read(p, as_version=4) for p in notebooks]
    pages = [{"file": p.stem + ".html", "title": title_of(nb) + _run_suffix(nb, p),
              "name": str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else p.name} for p, nb in zip(notebooks, nbs)]
    for i, (nb, page) in enumerate(zip(nbs, pages)):
        # the notebooks ran in notebooks/, so relative paths in them are relative to it
        body, _ = exporter.from_notebook_node(nb, resources={"book_nav": _nav(pages, i), "metadata": {
            "path": str(NOTEBOOKS), "name": page["title"]}})
        (out / page["file"]).write_text(body, encoding="utf-8")
        page["sections"] = headings(body)

    figures = sorted(FIGURES.glob("*.png"))
    for f in figures:
        shutil.copy2(f, out / "figures" / f.name)
    nav = _nav(pages, None)
    gallery = "".join(f'<figure><a href="figures/{f.name}"><img src="figures/{f.name}" alt="{f.stem}"></a>'
                      f"<figcaption>{f.name}</figcaption></figure>" for f in figures)
    (out / "gallery.html").write_text(_page("parbp: figures", nav, '<h1>Figures</h1>\n<p>Every PNG in <code>figures/'
                                            '</code> (each has a CSV of its data beside it).</p>\n'
                                            f'<div class="gallery">{gallery}</div>'), encoding="utf-8")

    n_executed = sum(p.parent == EXECUTED for p in notebooks)
    origin = (f"{n_executed} executed copies from the last <code>make study</code> (<code>build/executed/</code>) and "
              f"{len(notebooks) - n_executed} notebooks as stored in <code>notebooks/</code> (their quick runs)")
    toc = "".join(
        f'<li><a href="{p["file"]}">{html.escape(p["title"])}</a> <small>({p["name"]})</small>'
        + ("<ul>" + "".join(f'<li><a href="{p["file"]}#{a}">{html.escape(t)}</a></li>' for a, t in p["sections"])
           + "</ul>" if p["sections"] else "") + "</li>" for p in pages)
    index = ('<h1>parbp: parallel backpropagation, reproduced</h1>\n'
             f"<p>A reproducible study of parallel backpropagation for multilayer perceptrons (Kamra et al., USC 2016, "
             f"and the seeds beside it). This book renders {origin}.</p>\n<h2>Contents</h2>\n<ol>{toc}</ol>\n"
             f'<p><a href="gallery.html">All {len(figures)} figures</a></p>')
    (out / "index.html").write_text(_page("parbp: contents", nav, index), encoding="utf-8")
    return out / "index.html"


def main(argv=None) -> int:
    """``python -m parbp.book``: build the book and print where its index page is."""
    parser = Parser(prog="python -m parbp.book", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="auto", choices=SOURCES,
                        help="auto: build/executed/ if the last study left notebooks there, else notebooks/")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    print(f"book: {build(args.out, args.source)}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, prog="python -m parbp.book"))
