"""Take a screenshot of a session's admin change page with headless Chromium.

Usage (from the repository root; needs Debian's ``chromium`` package)::

    PYTHONPATH=. .venv/bin/python scripts/admin_screenshot.py [--output docs/admin-change-page.png]

What it does, all in a temporary directory that is removed afterwards:

1. configures Django from ``tests.settings`` with a fresh SQLite file and migrates it;
2. creates a superuser and a demo ``ToolAgent`` session through the real manager methods, with
   the scripted client: a turn with two tool calls (one of them failing) and a thinking block,
   a second turn, and a third turn that fails (the model is overloaded);
3. serves the project on 127.0.0.1 (a free port) in a thread, with the admin mounted at
   ``/admin/`` and the session admins registered by ``register_session_admins()``;
4. logs the superuser in (a database session made with the test client) and hands its session
   cookie to every request of the server, since Chromium's ``--screenshot`` mode cannot be given
   cookies;
5. runs ``chromium --headless --screenshot=...`` on the change page and writes the PNG.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
]


def configure(workdir: Path) -> None:
    """Django settings: the test suite's, with a file database and this script's URLconf."""
    import django
    from django.conf import settings

    sys.path.insert(0, str(ROOT))
    from tests import settings as base

    urls = types.ModuleType("admin_screenshot_urls")
    sys.modules[urls.__name__] = urls
    values = {name: getattr(base, name) for name in dir(base) if name.isupper()}
    values.update(
        DEBUG=False,
        ROOT_URLCONF=urls.__name__,
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                               "NAME": str(workdir / "db.sqlite3")}},
        AGENT_SESSION={},
    )
    settings.configure(**values)
    django.setup()

    from django.contrib import admin
    from django.urls import path

    from django_agent_session.admin import register_session_admins

    register_session_admins()
    urls.urlpatterns = [path("admin/", admin.site.urls)]


def demo_session() -> Any:
    """A conversation with tool calls, a tool error, thinking, and a failed last turn."""
    from django.contrib.auth import get_user_model

    from django_agent_session.exceptions import ModelOverloaded
    from django_agent_session.testing import text_reply, tool_reply, use_scripted_client
    from tests.testapp.models import Order, ToolAgent

    customer = get_user_model().objects.create_user("marta", "marta@example.com", "pw")
    Order.objects.create(number=1042, status="shipped", customer="Marta")
    usage = {"input_tokens": 812, "output_tokens": 96, "cache_read_input_tokens": 1536}
    with use_scripted_client() as client:
        client.enqueue(
            tool_reply("lookup_order", {"number": 1042}, text="Let me check both orders.",
                       usage=usage),
            tool_reply("lookup_order", {"number": 7}, usage=usage),
            text_reply("Order 1042 has shipped and is on its way. I could not find an order "
                       "number 7: could you check the number on your receipt?",
                       thinking="1042 shipped; 7 does not exist. Ask for the right number.",
                       usage=usage),
            text_reply("Shipped orders usually arrive within 2–3 working days.", usage=usage),
            ModelOverloaded("Overloaded: the provider asked to retry later."),
        )
        session = ToolAgent.objects.start_session(
            "Hi! Where are my orders 1042 and 7?", owner=customer,
            instruction_args={"company_name": "Acme Outdoor"})
        ToolAgent.objects.continue_session(session, "Thanks! When will 1042 arrive?")
        try:
            ToolAgent.objects.continue_session(session, "Can I change the delivery address?")
        except ModelOverloaded:
            pass  # recorded as a failed run: the admin shows it highlighted
    return session


def serve(cookie: str) -> tuple[Any, str]:
    """Serve the project on 127.0.0.1 in a thread, logged in through ``cookie``."""
    from django.conf import settings
    from django.contrib.staticfiles.handlers import StaticFilesHandler
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
    from django.core.wsgi import get_wsgi_application

    app = StaticFilesHandler(get_wsgi_application())

    def logged_in(environ: dict[str, Any], start_response: Any) -> Any:
        environ["HTTP_COOKIE"] = f"{settings.SESSION_COOKIE_NAME}={cookie}"
        return app(environ, start_response)

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler, allow_reuse_address=False)
    httpd.set_app(logged_in)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def screenshot(chromium: str, url: str, output: Path, profile: Path, size: str) -> None:
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
               f"--window-size={size}", f"--screenshot={output}", url]
    subprocess.run(command, check=True, timeout=120, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "admin-change-page.png")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--window-size", default="1280,1600")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="agent-admin-shot-"))
    try:
        os.environ.pop("DJANGO_SETTINGS_MODULE", None)
        configure(workdir)
        from django.contrib.auth import get_user_model
        from django.core.management import call_command
        from django.test import Client
        from django.urls import reverse

        call_command("migrate", verbosity=0)
        admin_user = get_user_model().objects.create_superuser("admin", "admin@example.com",
                                                               "admin")
        session = demo_session()
        client = Client()
        client.force_login(admin_user)
        from django.conf import settings

        cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
        httpd, base_url = serve(cookie)
        try:
            opts = session._meta
            page = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[session.pk])
            args.output.parent.mkdir(parents=True, exist_ok=True)
            screenshot(args.chromium, base_url + page, args.output.resolve(),
                       workdir / "chromium-profile", args.window_size)
        finally:
            httpd.shutdown()
            httpd.server_close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
