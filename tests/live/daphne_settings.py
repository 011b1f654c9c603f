"""Settings of the daphne processes of tests/live/test_daphne.py: the test database the test
process passes (``AGENT_LIVE_DB_NAME``), an in-memory channel layer (one process), and a
factory router with a bug for one agent name (``daphne_app.buggy_router``)."""

import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

DATABASES["default"]["NAME"] = os.environ["AGENT_LIVE_DB_NAME"]
ASGI_APPLICATION = "tests.live.daphne_app.application"
AGENT_SESSION = {"FACTORY_ROUTER": "tests.live.daphne_app.buggy_router"}
