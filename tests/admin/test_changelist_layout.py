"""The session changelist fits a 1280 px screen beside the admin's two sidebars: few default
columns, titles and owners cut short (server-side, then a CSS ellipsis), untitled sessions
named by a short id.

The shape is checked on the HTML; the fit itself in Debian's chromium (as tests/e2e does).
"""

from __future__ import annotations

import os
import re
import uuid
from datetime import timedelta
from html import unescape

import pytest
from django.conf import settings
from django.contrib.admin import AdminSite
from django.urls import path, reverse
from django.utils import timezone

from django_agent_session import admin as session_admin
from django_agent_session.admin.sessions import OWNER_CHARS, TITLE_CHARS
from tests.testapp.models import ChatAgent

site = AdminSite(name="agent_admin_layout")
session_admin.register_session_admins(site)

urlpatterns = [path("admin/", site.urls)]

pytestmark = [pytest.mark.urls(__name__)]

LONG_TITLE = "Where is my order number 1001 and when will it arrive at my house please? " * 2
LONG_OWNER = "a-customer-with-a-rather-long-username@example-company.com"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run"]


def changelist_url():
    return reverse(f"{site.name}:testapp_chatagent_changelist")


@pytest.fixture
def crowded(django_user_model):
    """Sessions as wide as they come: long titles, untitled ones, a long owner, big numbers."""
    owner = django_user_model.objects.create_user(LONG_OWNER, email=LONG_OWNER)
    now = timezone.now()
    sessions = []
    for i in range(4):
        sessions.append(ChatAgent.objects.create(
            owner=owner, title=LONG_TITLE[: 190 + i], turn_count=1234, input_tokens=98_765_432,
            last_activity_at=now - timedelta(days=400)))
        sessions.append(ChatAgent.objects.create(owner=owner, turn_count=5))
    return sessions


def cells(html, column):
    return re.findall(rf'<(?:td|th) class="field-{column}[^"]*">(.*?)</(?:td|th)>', html, re.S)


@pytest.mark.django_db
def test_the_changelist_has_few_columns_and_short_cells(admin_client, crowded):
    html = admin_client.get(changelist_url()).content.decode()
    columns = re.findall(r'<th scope="col" class="[^"]*column-(\w+)', html)
    assert columns == ["session", "owner_name", "status", "turns", "tokens",
                       "last_activity_at"]
    titled = [c for c in cells(html, "session") if "agent-cell-title" in c]
    assert len(titled) == 4
    for cell in titled:
        shown = unescape(re.search(r">([^<>]*)</span>", cell).group(1))
        assert len(shown) == TITLE_CHARS and shown.endswith("…")
        assert LONG_TITLE.startswith(shown[:-1])
        assert LONG_TITLE[:190] in unescape(cell)  # the whole title is the tooltip
    untitled = [c for c in cells(html, "session") if "untitled" in c]
    ids = {str(s.pk)[:8] for s in crowded if not s.title}
    assert len(untitled) == 4 and {re.search(r"untitled · (\w+)", c).group(1)
                                   for c in untitled} == ids
    for cell in cells(html, "owner_name"):
        assert 'class="agent-cell agent-cell-owner"' in cell
        shown = unescape(re.search(r">([^<>]*)</span>", cell).group(1))
        assert shown == LONG_OWNER[: OWNER_CHARS - 1] + "…"
    # the stylesheet that cuts them to the column's width comes with the page
    assert "django_agent_session/admin.css" in html


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("width", [1280, 1265])  # 1265: a 15 px scrollbar of a 1280 screen
def test_the_changelist_fits_1280_px_in_a_browser(live_server, client, admin_user, crowded,
                                                  width):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install it with scripts/install-browser.sh.",
                    pytrace=False)
    from playwright.sync_api import sync_playwright

    client.force_login(admin_user)
    cookie = {"name": settings.SESSION_COOKIE_NAME,
              "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
              "url": live_server.url}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": width, "height": 900})
            context.add_cookies([cookie])
            page = context.new_page()
            page.goto(live_server.url + changelist_url())
            assert page.locator("#nav-sidebar").is_visible()  # both sidebars shown
            assert page.locator("#changelist-filter").is_visible()
            assert page.locator("#result_list tbody tr").count() == len(crowded)
            sizes = page.evaluate("""() => {
                const results = document.querySelector('#changelist .results');
                return [document.documentElement.scrollWidth, results.scrollWidth,
                        results.clientWidth];
            }""")
            ellipsis = page.evaluate("""() => {
                const title = document.querySelector('.agent-cell-title');
                return title && getComputedStyle(title).textOverflow;
            }""")
        finally:
            browser.close()
    page_width, table_width, visible_width = sizes
    assert page_width <= width
    assert table_width <= visible_width, f"the changelist scrolls: {table_width} > {visible_width}"
    assert ellipsis == "ellipsis"


def test_a_uuid_is_never_the_whole_untitled_cell():
    pk = uuid.uuid4()
    cell = session_admin.AgentSessionAdmin(ChatAgent, site).session(ChatAgent(id=pk))
    assert f">untitled · {str(pk)[:8]}</span>" in cell and f">{pk}<" not in cell
