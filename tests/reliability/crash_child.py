"""A process that runs one turn and is killed with SIGKILL in the middle of it (test_crash.py).

Run as ``python -m tests.reliability.crash_child MODE SESSION_PK``. The database is the test
process's (``RELIABILITY_DB_NAME``), the model is the test's loopback server
(``RELIABILITY_BASE_URL``), and the turn lease is short (``RELIABILITY_LEASE_SECONDS``).
MODE: ``sync`` (plain call), ``stream`` (streamed sync call) or ``async`` (streamed async call).
"""

from __future__ import annotations

import asyncio
import os
import sys


def main(mode: str, pk: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    from django.conf import settings

    settings.DATABASES["default"]["NAME"] = os.environ["RELIABILITY_DB_NAME"]
    settings.AGENT_SESSION = {
        "TURN_LEASE_SECONDS": float(os.environ["RELIABILITY_LEASE_SECONDS"]),
        "ANTHROPIC": {"BASE_URL": os.environ["RELIABILITY_BASE_URL"], "API_KEY": "test",
                      "MAX_RETRIES": 0, "TIMEOUT": 120.0},
    }
    import django

    django.setup()
    from tests.testapp.models import ChatAgent

    def progress(kind: str, data: dict) -> None:
        pass

    async def aprogress(kind: str, data: dict) -> None:
        pass

    if mode == "async":
        asyncio.run(ChatAgent.objects.acontinue_session(pk, "doomed turn", on_progress=aprogress))
    else:
        ChatAgent.objects.continue_session(pk, "doomed turn",
                                           on_progress=progress if mode == "stream" else None)
    sys.exit("the turn finished; it should have been killed first")


if __name__ == "__main__":
    main(*sys.argv[1:3])
