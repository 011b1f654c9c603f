"""Regenerate the README's picture of the chat page mid-stream (docs/chat-page.png).

    PYTHONPATH=. .venv/bin/python -m tests.e2e.screenshot [docs/chat-page.png]

It serves the example like the browser test does (offline demo client, slowed down), holds two
short conversations, and takes the picture while the reply after a tool call is streaming in.
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

from .conftest import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from .server import ROOT, ExampleServer


def _ask(page: Page, message: str) -> None:
    replies = page.locator("li.message.assistant")
    count = replies.count()
    page.locator("#input").fill(message)
    page.locator("#send").click()
    expect(replies).to_have_count(count + 1)


def main(target: Path) -> None:
    expect.set_options(timeout=30_000)
    with ExampleServer(log=ARTIFACTS / "screenshot-server.log", demo_delay=0.2) as server, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1200, "height": 760})
        context.set_default_timeout(30_000)
        page = context.new_page()
        page.goto(server.url("/login/"))
        page.locator("#id_username").fill("demo")
        page.locator("#id_password").fill("demo-password")
        page.locator("button[type=submit]").click()

        _ask(page, "Do you ship to Norway?")
        expect(page.locator("li.message.assistant").last).to_have_attribute(
            "data-status", "completed")
        page.locator("#new-conversation").click()
        _ask(page, "Hi! My teapot order hasn't arrived yet.")
        expect(page.locator("li.message.assistant").last).to_have_attribute(
            "data-status", "completed")
        context.new_page().goto(page.url)  # a second tab: "2 viewing"
        expect(page.locator("#presence")).to_have_text("2 viewing")

        _ask(page, "Can you check order 1001? /lookup_order 1001")
        reply = page.locator("li.message.assistant").last
        expect(reply.locator(".tool-result")).to_contain_text("Blue teapot")
        expect(reply.locator(".text").nth(1)).to_contain_text('"found": true,')
        expect(reply).to_have_class("message assistant live streaming")
        page.screenshot(path=target)
        browser.close()
    print(f"wrote {target}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "chat-page.png")
