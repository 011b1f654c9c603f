"""The chat page's Markdown renderer (example_project/chat/static/chat/markdown.js) on its own,
in the browser the chat tests drive: what it renders, and that nothing in a reply becomes markup
it did not create itself (no raw HTML, no script, no image, no link but http/https/mailto)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page

from .server import ROOT

pytestmark = pytest.mark.own_database

SCRIPT = ROOT / "example_project" / "chat" / "static" / "chat" / "markdown.js"

#: every tag the renderer creates
ALLOWED = {"P", "H1", "H2", "H3", "H4", "H5", "H6", "STRONG", "EM", "DEL", "CODE", "PRE", "UL",
           "OL", "LI", "BLOCKQUOTE", "HR", "A", "TABLE", "THEAD", "TBODY", "TR", "TH", "TD",
           "DIV", "SPAN"}

RENDER = """source => {
  const box = document.createElement("div");
  box.append(window.renderMarkdown(source));
  return box.innerHTML;
}"""

NODES = """source => {
  const box = document.createElement("div");
  box.append(window.renderMarkdown(source));
  return {
    text: box.textContent,
    tags: Array.from(box.querySelectorAll("*"), (n) => n.tagName),
    attributes: Array.from(box.querySelectorAll("*"),
                           (n) => Array.from(n.attributes, (a) => [n.tagName, a.name, a.value]))
      .flat(),
  };
}"""


@pytest.fixture(scope="module")
def page(browser: Any) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_content("<!doctype html><title>markdown.js</title>")
    page.add_script_tag(path=str(SCRIPT))
    yield page
    context.close()
    assert errors == []


def render(page: Page, source: str) -> str:
    return page.evaluate(RENDER, source)


@pytest.mark.parametrize(("source", "html"), [
    ("**bold**, *em*, __strong__, _em_, ~~gone~~ and `a <b> span`",
     "<p><strong>bold</strong>, <em>em</em>, <strong>strong</strong>, <em>em</em>, "
     "<del>gone</del> and <code>a &lt;b&gt; span</code></p>"),
    ("***both*** and **bold *nested* end**",
     "<p><strong><em>both</em></strong> and <strong>bold <em>nested</em> end</strong></p>"),
    ("snake_case_name, ANTHROPIC_API_KEY, 2 * 3 * 4", "<p>snake_case_name, ANTHROPIC_API_KEY, "
     "2 * 3 * 4</p>"),
    ("# One\n### Three ###\nSetext\n---", "<h1>One</h1><h3>Three</h3><h2>Setext</h2>"),
    ("first line\nsecond line\n\nnext paragraph",
     "<p>first line\nsecond line</p><p>next paragraph</p>"),
    ("- a\n- b\n  - nested\n- c", "<ul><li>a</li><li>b<ul><li>nested</li></ul></li><li>c</li></ul>"),
    ("3. three\n4. four", '<ol start="3"><li>three</li><li>four</li></ol>'),
    ("- a\n\n- b", "<ul><li><p>a</p></li><li><p>b</p></li></ul>"),
    ("- [x] done\n- [ ] to do", '<ul><li class="task"><span class="task-box">☑ </span>done</li>'
     '<li class="task"><span class="task-box">☐ </span>to do</li></ul>'),
    ("```python\nif a < b:\n    print('<b>')\n```",
     '<pre><code class="language-python">if a &lt; b:\n    print(\'&lt;b&gt;\')</code></pre>'),
    ("```\nstill streaming", "<pre><code>still streaming</code></pre>"),
    ("> quoted\n> **text**", "<blockquote><p>quoted\n<strong>text</strong></p></blockquote>"),
    ("a\n\n***\n\nb", "<p>a</p><hr><p>b</p>"),
    ("| a | b |\n|---|--:|\n| `x|y` | 2 |",
     '<div class="table-scroll"><table><thead><tr><th>a</th><th style="text-align: right;">b'
     '</th></tr></thead><tbody><tr><td><code>x|y</code></td><td style="text-align: right;">2'
     "</td></tr></tbody></table></div>"),
    ("[docs](https://example.com/a_(b) \"The docs\")",
     '<p><a href="https://example.com/a_(b)" rel="noopener noreferrer" target="_blank" '
     'title="The docs">docs</a></p>'),
    ("see https://example.com/x_y. or <mailto:me@example.com>",
     '<p>see <a href="https://example.com/x_y" rel="noopener noreferrer" target="_blank">'
     'https://example.com/x_y</a>. or <a href="mailto:me@example.com" rel="noopener noreferrer" '
     'target="_blank">mailto:me@example.com</a></p>'),
    ("\\*not em\\* and \\`not code\\`", "<p>*not em* and `not code`</p>"),
    ("unclosed **bold and `code", "<p>unclosed **bold and `code</p>"),
])
def test_renders_markdown(page: Page, source: str, html: str) -> None:
    assert render(page, source) == html


@pytest.mark.parametrize("source", [
    "<script>window.injected = 1</script>",
    '<img src=x onerror="window.injected = 2">',
    '<a href="javascript:window.injected = 3">html link</a>',
    "[click](javascript:window.injected=4)",
    "[click]( JavaScript:window.injected=5 )",
    "[click](data:text/html,<script>window.injected=6</script>)",
    "[click](vbscript:msgbox)",
    "[relative](/admin/)",
    "![image](javascript:window.injected=7)",
    "<javascript:window.injected=8>",
    '[ok](https://example.com "x\\" onmouseover=\\"window.injected=9")',
    "**<svg onload=window.injected=10>**",
    "```html\n<iframe src=javascript:window.injected=11></iframe>\n```",
    "| <b>cell</b> |\n|---|\n| <img src=x onerror=window.injected=12> |",
    "&lt;script&gt; &#60;img&#62;",
])
def test_never_creates_markup_from_the_reply(page: Page, source: str) -> None:
    result = page.evaluate(NODES, source)
    assert set(result["tags"]) <= ALLOWED, result["tags"]
    for tag, name, value in result["attributes"]:
        assert not name.startswith("on"), (tag, name, value)
        if name == "href":
            assert tag == "A" and value.lower().startswith(("https:", "http:", "mailto:"))
        assert name in {"href", "rel", "target", "title", "class", "style", "start"}, name
    for tag, name, value in result["attributes"]:
        if tag == "A" and name == "rel":
            assert value == "noopener noreferrer"
    assert page.evaluate("window.injected") is None


def test_unsafe_links_are_shown_as_written(page: Page) -> None:
    assert render(page, "[click](javascript:alert(1)) ![x](data:image/png,AAAA)") == (
        "<p>[click](javascript:alert(1)) ![x](data:image/png,AAAA)</p>")
    assert render(page, "<script>alert(1)</script>") == (
        "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>")
    image = render(page, "![a teapot](https://example.com/teapot.png)")
    assert image == ('<p><a href="https://example.com/teapot.png" rel="noopener noreferrer" '
                     'target="_blank">a teapot</a></p>')  # a link: an image is never loaded


def test_streamed_prefixes_render_without_errors(page: Page) -> None:
    """A reply is rendered again after every delta: every prefix of one must render."""
    reply = ("## Plan\n\n1. **Check** the `order`:\n   - see [the docs](https://example.com)\n"
             "2. Done ~~maybe~~\n\n```sh\necho '<hi>'\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
             "> quote *end*")
    prefixes = [reply[:n] for n in range(len(reply) + 1)]
    results = page.evaluate(
        "sources => sources.map((s) => { const d = document.createElement('div');"
        " d.append(window.renderMarkdown(s)); return d.innerHTML; })", prefixes)
    assert len(results) == len(prefixes)
    assert "<li><strong>Check</strong> the <code>order</code>:<ul><li>see <a" in results[-1]
