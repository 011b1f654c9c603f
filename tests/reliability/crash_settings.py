"""Settings of the processes test_crash.py kills: the test's database, its loopback Messages
API server and a one-second turn lease (all passed through the environment)."""

import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

DATABASES["default"]["NAME"] = os.environ["RELIABILITY_DB_NAME"]
AGENT_SESSION = {
    "TURN_LEASE_SECONDS": float(os.environ["RELIABILITY_LEASE_SECONDS"]),
    "TURN_WAIT_SECONDS": 30.0,
    # a killed ASGI process's live ownership expires quickly too, so the next one can take over
    "OWNER_LEASE_SECONDS": float(os.environ["RELIABILITY_LEASE_SECONDS"]) * 2,
    "SHUTDOWN_GRACE_SECONDS": float(os.environ.get("RELIABILITY_SHUTDOWN_GRACE", "10")),
    "ANTHROPIC": {"BASE_URL": os.environ["RELIABILITY_BASE_URL"], "API_KEY": "test",
                  "MAX_RETRIES": 0, "TIMEOUT": 120.0},
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
