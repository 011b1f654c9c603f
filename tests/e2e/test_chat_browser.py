"""The example's chat page in a real browser, against the example served by daphne.

One walk through what a new user does (each step builds on the last, so it is one test): log
in, start a conversation and watch the reply stream in, open a second tab on it and see the next
reply (with a tool call) there too, lose the WebSocket mid-reply and get the rest after
reconnecting from the last seq, and press Stop mid-stream. Then a tool call that waits for a
person (``refund 1002``): its card on every tab, approved in one and resolved in the other, a
second one rejected from the admin. Then a reply in Markdown (rendered while it streams, its
markup shown as text), and the page on a 390 px wide phone (no sideways scrolling; the list, New
conversation and Log out in a drawer). Screenshots go to artifacts/e2e/.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, WebSocketRoute, expect

from .server import ExampleServer

pytestmark = pytest.mark.own_database

expect.set_options(timeout=15_000)  # generous on a loaded machine; a pass takes far less

BANNER = "Offline demo: set ANTHROPIC_API_KEY to talk to Claude"
STREAMING = re.compile(r"\bstreaming\b")


def demo_reply(message: str) -> str:
    """What the offline demo client answers (django_agent_session/clients/demo.py)."""
    return (f"[offline demo] You said: {message!r}. This reply comes from the offline demo "
            f"client; set ANTHROPIC_API_KEY to talk to Claude.")


def last_reply(page: Page) -> Locator:
    return page.locator("li.message.assistant").last


def send(page: Page, message: str) -> Locator:
    """Send ``message``; returns the reply it gets (in this tab)."""
    replies = page.locator("li.message.assistant")
    count = replies.count()
    page.locator("#input").fill(message)
    page.locator("#send").click()
    expect(replies).to_have_count(count + 1)
    return replies.nth(count)


def watch_stream(reply: Locator, *, samples: int = 3, timeout: float = 15.0) -> list[str]:
    """The reply's text, sampled while it is marked as streaming, until it has grown
    ``samples`` times; fails if the turn ends (or times out) first."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        streaming, text = reply.evaluate(
            "n => [n.classList.contains('streaming'), n.querySelector('.bubble').textContent]")
        assert streaming, f"the reply stopped streaming after {seen!r}"
        if text and (not seen or text != seen[-1]):
            assert not seen or text.startswith(seen[-1]), f"{text!r} does not extend {seen[-1]!r}"
            seen.append(text)
            if len(seen) >= samples:
                return seen
        reply.page.wait_for_timeout(25)
    raise AssertionError(f"the reply did not grow {samples} times while streaming: {seen!r}")


def reply_text(reply: Locator) -> str:
    return " ".join(reply.locator(".text").all_text_contents())


def test_chat_page_streams_shares_reconnects_and_stops(
        browser: Any, example_server: ExampleServer, artifacts: Path) -> None:
    started = time.monotonic()
    context = browser.new_context(viewport={"width": 1100, "height": 720})
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    # the first tab's sockets go through a route the test can cut, to test reconnection
    sockets: list[tuple[str, WebSocketRoute, WebSocketRoute]] = []

    def route(ws: WebSocketRoute) -> None:
        sockets.append((ws.url, ws, ws.connect_to_server()))

    page.route_web_socket(re.compile(r"/ws/agent-sessions/"), route)
    pages = [page]
    try:
        # -- log in ---------------------------------------------------------------------------
        page.goto(example_server.url("/"))
        expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
        page.locator("#id_username").fill("demo")
        page.locator("#id_password").fill("demo-password")
        page.screenshot(path=artifacts / "01-login.png")
        page.locator("button[type=submit]").click()
        expect(page.locator("#offline-banner")).to_have_text(BANNER)
        expect(page.locator("#connection")).to_have_attribute("data-state", "open")
        expect(page.locator("#send")).to_be_enabled()
        assert re.search(r"/ws/agent-sessions/support/[0-9a-f-]{36}/\?after_seq=0$",
                         sockets[0][0]), sockets[0][0]

        # -- a new conversation: the reply streams in before the turn ends ---------------------
        first = "Hello from the browser test"
        reply = send(page, first)
        expect(page.locator("li.message.user .bubble").first).to_have_text(first)
        expect(reply).to_have_class(STREAMING)
        expect(page.locator("#run-indicator")).to_be_visible()
        expect(page.locator("#stop")).to_be_enabled()
        grown = watch_stream(reply)
        page.screenshot(path=artifacts / "02-streaming.png")
        expect(reply).to_have_attribute("data-status", "completed")
        expect(reply).not_to_have_class(STREAMING)
        assert reply_text(reply) == demo_reply(first)
        assert len(grown[-1]) < len(demo_reply(first))  # seen before the whole reply was there
        expect(page.locator("#stop")).to_be_disabled()
        expect(page).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
        expect(page.locator("#presence")).to_have_text("1 viewing")
        expect(page.locator("#conversations li.current a")).to_have_text(first)
        expect(page.locator("#chat-title")).to_have_text(first)

        # -- a second tab on the same conversation sees the history and the next reply -------
        other = context.new_page()
        other.on("pageerror", lambda error: errors.append(str(error)))
        pages.append(other)
        other.goto(page.url)
        expect(other.locator("#connection")).to_have_attribute("data-state", "open")
        expect(last_reply(other).locator(".text")).to_have_text(demo_reply(first))
        expect(page.locator("#presence")).to_have_text("2 viewing")
        expect(other.locator("#presence")).to_have_text("2 viewing")

        send(page, "/lookup_order 1001")
        expect(other.locator("li.message.user .bubble").last).to_have_text("/lookup_order 1001")
        tool = other.locator(".tool")
        expect(tool.locator(".tool-name")).to_have_text("lookup_order")
        expect(tool.locator(".tool-result")).to_contain_text('"item": "Blue teapot"')
        remote = last_reply(other)
        watch_stream(remote, samples=2)  # the answer after the tool streams in the other tab
        page.screenshot(path=artifacts / "03-tool-call-streaming.png")
        expect(remote).to_have_attribute("data-status", "completed")
        expect(remote.locator(".text").last).to_contain_text("The tool answered:")
        expect(last_reply(page)).to_have_attribute("data-status", "completed")
        assert reply_text(last_reply(page)) == reply_text(remote)
        other.screenshot(path=artifacts / "04-second-tab.png")

        # -- the socket drops mid-reply: reconnecting resumes from the last seq ----------------
        resumed = "Please tell me everything about teapots, " * 3 + "and the kettles."
        reply = send(page, resumed)
        watch_stream(reply, samples=2)
        _, client_side, server_side = sockets[-1]
        server_side.close()
        client_side.close(code=4000, reason="test: connection lost")
        deadline = time.monotonic() + 10
        while len(sockets) < 2 and time.monotonic() < deadline:
            page.wait_for_timeout(50)  # lets Playwright run the route handler of a new socket
        assert len(sockets) == 2, [url for url, _, _ in sockets]
        expect(page.locator("#connection")).to_have_attribute("data-state", "open")
        match = re.search(r"after_seq=(\d+)$", sockets[1][0])
        assert match and int(match.group(1)) > 0, sockets[1][0]  # resumed, not replayed from 0
        reply = last_reply(page)
        watch_stream(reply, samples=2)  # redrawn from the state's partial text, still growing
        expect(reply).to_have_attribute("data-status", "completed")
        assert reply_text(reply) == demo_reply(resumed)  # no word lost, none twice
        expect(page.locator("li.message.user .bubble")).to_have_count(3)
        expect(page.locator("li.message.assistant")).to_have_count(3)
        expect(last_reply(other)).to_have_attribute("data-status", "completed")
        assert reply_text(last_reply(other)) == demo_reply(resumed)
        page.screenshot(path=artifacts / "05-reconnected.png")

        # -- Stop mid-stream: the run is cancelled, in both tabs, and the input works again ----
        long = " ".join(["a rather long question about teapots"] * 8)
        reply = send(page, long)
        watch_stream(reply, samples=3)
        page.locator("#stop").click()
        expect(reply).to_have_attribute("data-status", "cancelled")
        expect(reply.locator(".note")).to_have_text("Stopped.")
        expect(reply).not_to_have_class(STREAMING)
        assert 0 < len(reply_text(reply)) < len(demo_reply(long))
        expect(last_reply(other)).to_have_attribute("data-status", "cancelled")
        expect(page.locator("#stop")).to_be_disabled()
        expect(page.locator("#run-indicator")).to_be_hidden()
        expect(page.locator("#input")).to_be_editable()
        page.screenshot(path=artifacts / "06-stopped.png")

        # usable again: the next message runs at once (and markup in it stays text)
        markup = 'Still there? <img src=x onerror="window.injected=1"><b>bold</b>'
        again = send(page, markup)
        expect(page.locator("li.message.user .bubble").last).to_have_text(markup)
        expect(again).to_have_class(STREAMING)
        expect(again.locator(".text")).to_contain_text("<img src=x")
        assert page.locator("#messages img, #messages b").count() == 0
        assert page.evaluate("window.injected") is None
        expect(page.locator("#error")).to_be_hidden()
        assert errors == []
    finally:
        for number, open_page in enumerate(pages, 1):
            open_page.screenshot(path=artifacts / f"99-final-tab{number}.png")
        context.close()
    assert time.monotonic() - started < 60


def login(page: Page, server: ExampleServer, path: str = "/") -> None:
    page.goto(server.url(path))
    page.locator("#id_username").fill("demo")
    page.locator("#id_password").fill("demo-password")
    page.locator("button[type=submit]").click()


def test_a_refund_waits_for_approval_on_every_tab(
        browser: Any, example_server: ExampleServer, artifacts: Path) -> None:
    """``refund 1002`` pauses the turn on a call that needs a person: every open tab shows it
    as a card (also after its socket dropped); approving it (with an edited input) in one tab
    resolves the card in the other, which then sees the reply stream in. A second refund is
    rejected from the admin's session page, and the chat tabs see that too; a reload draws both
    cards decided."""
    started = time.monotonic()
    context = browser.new_context(viewport={"width": 1100, "height": 720})
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    sockets: list[tuple[WebSocketRoute, WebSocketRoute]] = []
    page.route_web_socket(re.compile(r"/ws/agent-sessions/"),
                          lambda ws: sockets.append((ws, ws.connect_to_server())))
    pages = [page]
    try:
        login(page, example_server)
        expect(page.locator("#connection")).to_have_attribute("data-state", "open")

        # -- the call waits: a card with the input, the turn is paused (nothing to stop) -----
        reply = send(page, "refund 1002 please")
        card = page.locator(".approval")
        expect(card).to_have_attribute("data-state", "pending")
        expect(card.locator(".approval-title")).to_have_text("refund_order needs your approval")
        expect(reply).to_have_attribute("data-status", "awaiting_approval")
        expect(reply).not_to_have_class(STREAMING)
        expect(reply.locator(".text").first).to_have_text("[offline demo] Calling refund_order.")
        expect(reply.locator(".tool-result")).to_have_text("waiting for approval…")
        expect(page.locator("#stop")).to_be_disabled()
        expect(page.locator("#run-indicator")).to_be_hidden()
        expect(card.locator(".approval-expiry")).to_contain_text("rejected automatically at")
        assert card.locator(".approval-input").input_value() == '{\n  "number": 1002\n}'
        expect(page).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))

        # -- a second tab opened on the paused conversation shows the same card ---------------
        other = context.new_page()
        other.on("pageerror", lambda error: errors.append(str(error)))
        pages.append(other)
        other.goto(page.url)
        expect(other.locator("#connection")).to_have_attribute("data-state", "open")
        other_card = other.locator(".approval")
        expect(other_card).to_have_attribute("data-state", "pending")
        expect(other_card.locator(".approval-expiry")).to_contain_text("rejected automatically")
        expect(last_reply(other)).to_have_attribute("data-status", "awaiting_approval")
        expect(other.locator("li.message.user .bubble")).to_have_text(["refund 1002 please"])
        page.screenshot(path=artifacts / "10-approval-pending.png")

        # -- the first tab's socket drops: it reconnects with the card still there -----------
        client_side, server_side = sockets[-1]
        server_side.close()
        client_side.close(code=4000, reason="test: connection lost")
        deadline = time.monotonic() + 10
        while len(sockets) < 2 and time.monotonic() < deadline:
            page.wait_for_timeout(50)  # lets Playwright run the route handler of a new socket
        expect(page.locator("#connection")).to_have_attribute("data-state", "open")
        expect(page.locator(".approval")).to_have_count(1)
        expect(card).to_have_attribute("data-state", "pending")
        expect(page.locator("li.message")).to_have_count(2)

        # -- a bad edit is refused on the card (by the page, then by the server) --------------
        card.locator(".approval-input").fill("{not json")
        card.locator("button.approve").click()
        expect(card.locator(".approval-status")).to_have_text("The input is not valid JSON.")
        card.locator(".approval-input").fill('{"number": "one thousand"}')
        card.locator("button.approve").click()
        expect(card.locator(".approval-status")).to_contain_text("Invalid input for tool")
        expect(card).to_have_attribute("data-state", "pending")
        expect(other_card).to_have_attribute("data-state", "pending")
        expect(page.locator("#error")).to_be_hidden()

        # -- approve an edited input in the first tab: the second sees it, then the reply -----
        card.locator(".approval-input").fill('{"number": 1001}')
        card.locator("button.approve").click()
        expect(other_card).to_have_attribute("data-state", "approved")
        expect(other_card.locator(".approval-status")).to_have_text(
            "Approved with an edited input by you.")
        remote = last_reply(other)
        # the decided call's result replaces "waiting for approval…" first (not a stream)
        expect(remote.locator(".tool-result")).to_contain_text('"refunded": true')
        watch_stream(remote, samples=2)  # the resumed turn streams in the other tab
        expect(remote).to_have_attribute("data-status", "completed")
        answer = ('[offline demo] The tool answered: {"refunded": true, "number": 1001, '
                  '"item": "Blue teapot"}')
        expect(remote.locator(".text").last).to_have_text(answer)
        expect(remote.locator(".tool-result")).to_contain_text('"refunded": true')
        expect(card).to_have_attribute("data-state", "approved")
        expect(last_reply(page)).to_have_attribute("data-status", "completed")
        assert reply_text(last_reply(page)) == reply_text(remote)
        expect(page.locator("li.message.assistant")).to_have_count(1)  # the same turn went on
        expect(other.locator("li.message.assistant")).to_have_count(1)
        other.screenshot(path=artifacts / "11-approved-second-tab.png")

        # -- a second refund, rejected from the admin: both chat tabs see it ------------------
        send(page, "refund 1002 again")
        expect(page.locator('.approval[data-state="pending"]')).to_have_count(1)
        expect(other.locator('.approval[data-state="pending"]')).to_have_count(1)
        conversation = re.search(r"/c/([0-9a-f-]{36})/$", page.url).group(1)
        admin = context.new_page()  # logged in already: the same browser session
        admin.on("pageerror", lambda error: errors.append(str(error)))
        pages.append(admin)
        admin.goto(example_server.url(f"/admin/chat/chatagent/{conversation}/change/"))
        pending = admin.locator(".agent-approval-pending")
        expect(pending).to_have_count(1)
        expect(pending.locator(".agent-tool-head code")).to_have_text("refund_order")
        expect(pending.locator("textarea")).to_have_value('{\n  "number": 1002\n}')
        pending.locator("input.agent-decide-reason").fill("Refunded once already.")
        admin.screenshot(path=artifacts / "12-admin-pending.png", full_page=True)
        pending.locator("button.agent-reject").click()
        expect(admin.locator("ul.messagelist li.success")).to_contain_text(
            "Rejected refund_order")
        expect(admin.locator(".agent-approval-pending")).to_have_count(0)
        for tab in (page, other):
            rejected = tab.locator(".approval").last
            expect(rejected).to_have_attribute("data-state", "rejected")
            expect(rejected.locator(".approval-status")).to_have_text(
                "Rejected by you: Refunded once already.")
            expect(last_reply(tab)).to_have_attribute("data-status", "completed")
            expect(last_reply(tab).locator(".text").last).to_contain_text(
                "Not run: the call was rejected. Refunded once already.")
        page.screenshot(path=artifacts / "13-rejected-from-admin.png")

        # -- a reload draws both decisions from the stored events -----------------------------
        other.reload()
        expect(other.locator("#connection")).to_have_attribute("data-state", "open")
        expect(other.locator(".approval")).to_have_count(2)
        expect(other.locator(".approval").first).to_have_attribute("data-state", "approved")
        expect(other.locator(".approval").last).to_have_attribute("data-state", "rejected")
        expect(other.locator(".approval.resolved button")).to_have_count(4)  # hidden controls
        expect(other.locator(".approval button:visible")).to_have_count(0)
        expect(other.locator("li.message.assistant")).to_have_count(2)
        assert errors == []
    finally:
        for number, open_page in enumerate(pages, 1):
            open_page.screenshot(path=artifacts / f"19-approval-final-tab{number}.png")
        context.close()
    assert time.monotonic() - started < 60


#: what the model "writes" (the example's demo client answers ``/markdown <text>`` with
#: <text>): Markdown, and markup that must stay text
MARKDOWN = """## Order summary

Here is **bold text** and *some emphasis*, then a list:

- first item with `inline code`
- second item, see [the docs](https://example.com/docs)
- third item: [bad](javascript:window.injected=3)

<script>window.injected=1</script>
<img src=x onerror="window.injected=2">

```python
print("<b>not bold</b>")
```

That is all, thank you for waiting while this reply streams in word by word."""


def markdown_state(reply: Locator) -> dict[str, Any]:
    return reply.evaluate("""n => ({
        streaming: n.classList.contains('streaming'),
        items: n.querySelectorAll('.text li').length,
        strong: n.querySelectorAll('.text strong').length,
        code: n.querySelectorAll('.text pre > code').length,
    })""")


def assert_markdown_rendered(page: Page, reply: Locator) -> None:
    text = reply.locator(".text")
    expect(text.locator("h2")).to_have_text("Order summary")
    expect(text.locator("strong")).to_have_text("bold text")
    expect(text.locator("em")).to_have_text("some emphasis")
    expect(text.locator("ul > li")).to_have_count(3)
    expect(text.locator("li code")).to_have_text("inline code")
    docs = text.locator('a[href="https://example.com/docs"]')
    expect(docs).to_have_text("the docs")
    expect(docs).to_have_attribute("rel", "noopener noreferrer")
    expect(docs).to_have_attribute("target", "_blank")
    assert text.locator("a").count() == 1  # javascript: is no link, only text
    expect(text.locator("li").nth(2)).to_have_text("third item: [bad](javascript:window.injected=3)")
    expect(text.locator("pre > code.language-python")).to_have_text('print("<b>not bold</b>")')
    expect(text).to_contain_text("<script>window.injected=1</script>")
    expect(text).to_contain_text('<img src=x onerror="window.injected=2">')
    assert page.locator("#messages script, #messages img, #messages b, #messages iframe"
                        ).count() == 0
    assert page.locator('#messages a[href^="javascript"]').count() == 0
    assert page.evaluate("window.injected") is None


def test_a_markdown_reply_renders_progressively_and_safely(
        browser: Any, example_server: ExampleServer, artifacts: Path) -> None:
    """The model's reply is Markdown: rendered (headings, emphasis, lists, code, links) while it
    streams, with the markup in it shown as text; the user's own message stays plain text, and
    a reload draws the same from the stored events."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        login(page, example_server)
        expect(page.locator("#connection")).to_have_attribute("data-state", "open")
        message = f"/markdown {MARKDOWN}"
        reply = send(page, message)
        user = page.locator("li.message.user .bubble").last
        expect(user).to_have_text(message)
        assert user.evaluate("n => n.textContent") == message  # as typed: no Markdown there
        assert user.locator("*").count() == 0

        # the list is drawn as a list while the code block after it has not arrived yet
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            state = markdown_state(reply)
            assert state["streaming"], f"the reply stopped streaming after {seen!r}"
            if not seen or state != seen[-1]:
                seen.append(state)
            if state["items"] >= 2 and state["code"] == 0:
                break
            page.wait_for_timeout(25)
        else:
            raise AssertionError(f"no list while streaming: {seen!r}")
        assert any(s["strong"] == 1 and s["items"] == 0 for s in seen), seen  # grew in steps
        page.screenshot(path=artifacts / "20-markdown-streaming.png")
        expect(reply).to_have_attribute("data-status", "completed")
        expect(reply.locator(".text").first).to_contain_text(
            "[offline demo] Your Markdown, as a model's reply:")
        assert_markdown_rendered(page, reply)
        page.screenshot(path=artifacts / "21-markdown-reply.png", full_page=True)

        page.reload()  # drawn again from the stored events
        expect(page.locator("#connection")).to_have_attribute("data-state", "open")
        assert_markdown_rendered(page, last_reply(page))
        expect(page.locator("li.message.user .bubble")).to_have_text([message])
        assert errors == []
    finally:
        context.close()


PHONE = {"width": 390, "height": 844}

#: a reply wider than a phone: a long code line, a long URL, a table
WIDE = ("Wide things:\n\n```text\n" + "x = " + "1234567890" * 12 + "\n```\n\n"
        "https://example.com/" + "a-very-long-path" * 6 + "\n\n"
        "| column one | column two | column three | column four | column five |\n"
        "|---|---|---|---|---|\n"
        "| some value | another value | yet another one | and one more | the last |")


def assert_fits(page: Page, what: str) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{what}: the page is {width}px wide (scrolls sideways)"


def toggle_drawer(page: Page) -> None:
    """Open or close the conversation drawer with the header's ☰ button; waits for its slide."""
    page.get_by_role("button", name="Conversations").click()
    page.locator("#sidebar").evaluate(
        "n => Promise.all(n.getAnimations().map((a) => a.finished))")


def assert_on_screen(locator: Locator) -> None:
    expect(locator).to_be_visible()
    box = locator.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box


def test_the_chat_page_works_on_a_phone(
        browser: Any, example_server: ExampleServer, artifacts: Path) -> None:
    """390 px wide: no sideways scrolling (also with a wide reply); the conversation list,
    New conversation and Log out are in a drawer the header's ☰ button opens."""
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(example_server.url("/login/"))
        assert_fits(page, "the login page")
        login(page, example_server, "/login/")
        expect(page.locator("#connection")).to_have_attribute("data-state", "open")
        toggle = page.get_by_role("button", name="Conversations")
        assert_on_screen(toggle)
        expect(toggle).to_have_attribute("aria-expanded", "false")
        for hidden in ("#conversations", "#new-conversation", "form.logout button"):
            expect(page.locator(hidden)).to_be_hidden()  # in the closed drawer
        assert_fits(page, "the chat page")

        # -- a conversation: the composer and a wide Markdown reply fit -----------------------
        reply = send(page, f"/markdown {WIDE}")
        for control in ("#input", "#send", "#stop", "#connection", "#chat-title"):
            assert_on_screen(page.locator(control))
        expect(reply).to_have_attribute("data-status", "completed")
        expect(reply.locator(".text table td")).to_have_count(5)
        assert_fits(page, "a wide reply")
        code = reply.locator(".text pre")
        assert code.evaluate("n => n.scrollWidth > n.clientWidth")  # scrolls on its own
        assert_on_screen(reply)
        page.screenshot(path=artifacts / "30-phone-chat.png")
        conversation = page.url
        expect(page).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))

        # -- the drawer: the list, New conversation and Log out; Escape and a tap close it ----
        toggle_drawer(page)
        expect(toggle).to_have_attribute("aria-expanded", "true")
        current = page.locator("#conversations li.current a")
        assert_on_screen(current)
        expect(current).to_contain_text("/markdown Wide things:")
        assert_on_screen(page.locator("#new-conversation"))
        assert_on_screen(page.get_by_role("button", name="Log out"))
        assert_fits(page, "the open drawer")
        page.screenshot(path=artifacts / "31-phone-drawer.png")
        page.keyboard.press("Escape")
        expect(page.locator("#conversations")).to_be_hidden()
        expect(toggle).to_have_attribute("aria-expanded", "false")
        toggle_drawer(page)
        expect(page.locator("#conversations")).to_be_visible()
        page.locator("#sidebar-backdrop").click(position={"x": 370, "y": 400})  # beside it
        expect(page.locator("#conversations")).to_be_hidden()
        toggle_drawer(page)
        page.locator("#sidebar-close").click()
        expect(page.locator("#conversations")).to_be_hidden()

        # -- New conversation, then back to the first one from the list -----------------------
        toggle_drawer(page)
        page.locator("#new-conversation").click()
        expect(page).to_have_url(example_server.url("/"))
        expect(page.locator("#chat-title")).to_have_text("New conversation")
        expect(page.locator("li.message")).to_have_count(0)
        assert_fits(page, "a new conversation")
        toggle_drawer(page)
        listed = page.locator("#conversations li a", has_text="/markdown Wide things:")
        assert_on_screen(listed)
        listed.click()
        expect(page).to_have_url(conversation)
        expect(last_reply(page).locator(".text table td")).to_have_count(5)  # from history
        assert_fits(page, "the stored conversation")

        # -- Log out from the drawer -------------------------------------------------------------
        toggle_drawer(page)
        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(re.compile(r"/login/$"))
        assert_fits(page, "the login page after logging out")
        assert errors == []
    finally:
        context.close()


def test_an_image_is_attached_uploaded_and_sent_by_id(
        browser: Any, example_server: ExampleServer, artifacts: Path) -> None:
    """The composer's file input uploads the image over REST (its type read from its bytes),
    then sends the message naming it; a file that is no image or PDF is refused with the
    server's reason, and nothing is sent. A reload draws the stored message with its file."""
    from tests.helpers.files import SVG, png

    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        login(page, example_server)
        expect(page.locator("#connection")).to_have_attribute("data-state", "open")
        page.locator("#attach").set_input_files(
            files=[{"name": "red.png", "mimeType": "image/png", "buffer": png(4, 4)}])
        reply = send(page, "What is in this picture?")
        user = page.locator("li.message.user .bubble").last
        expect(user).to_have_text("What is in this picture? 📎 1 file")
        expect(reply).to_have_attribute("data-status", "completed")
        expect(reply.locator(".text")).to_contain_text("You said: 'What is in this picture?'")
        assert page.locator("#attach").evaluate("n => n.files.length") == 0  # cleared
        page.screenshot(path=artifacts / "40-attachment.png")

        # an SVG named .png: refused by its bytes, the message stays unsent
        page.locator("#attach").set_input_files(
            files=[{"name": "logo.png", "mimeType": "image/png", "buffer": SVG}])
        page.locator("#input").fill("And this one?")
        page.locator("#send").click()
        expect(page.locator("#error")).to_be_visible()
        expect(page.locator("#error")).to_contain_text("image/svg+xml")
        expect(page.locator("li.message.user")).to_have_count(1)

        page.reload()
        expect(page.locator("li.message.user .bubble").last).to_have_text(
            "What is in this picture? 📎 1 file")
        assert errors == []
    finally:
        context.close()
