"""Settings of the ASGI server subprocesses the two-process live tests start.

The test process passes, through the environment, the test database to share, the Redis key
prefix of its run and the loopback Messages API server to call (and optionally the API key to
send it, so a test can tell which process made a request; the executor and its Tasks backends).
The same settings serve the ``db_worker`` process of tests/runs/test_tasks_executor.py.
"""

import json
import os

from django_agent_session.layers import redis_channel_layer
from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

DATABASES["default"]["NAME"] = os.environ["AGENT_LIVE_DB_NAME"]

CHANNEL_LAYERS = {"default": redis_channel_layer(
    os.environ.get("AGENT_LIVE_REDIS_URL", "redis://127.0.0.1:6379"),
    prefix=os.environ["AGENT_LIVE_REDIS_PREFIX"])}

AGENT_SESSION = {
    "ANTHROPIC": {"BASE_URL": os.environ["AGENT_LIVE_LOOPBACK_URL"],
                  "API_KEY": os.environ.get("AGENT_LIVE_API_KEY", "test"), "MAX_RETRIES": 0},
    "OWNER_LEASE_SECONDS": float(os.environ.get("AGENT_LIVE_OWNER_LEASE", "30")),
    "TURN_LEASE_SECONDS": float(os.environ.get("AGENT_LIVE_TURN_LEASE", "120")),
    "TURN_WAIT_SECONDS": 30.0,
    "TURN_POLL_SECONDS": 0.05,
    "EXECUTOR": os.environ.get("AGENT_LIVE_EXECUTOR", "inline"),
    "TASK_BACKEND": os.environ.get("AGENT_LIVE_TASK_BACKEND", "default"),
    "TASK_QUEUE_NAME": os.environ.get("AGENT_LIVE_TASK_QUEUE", "default"),
    "SHUTDOWN_GRACE_SECONDS": float(os.environ.get("AGENT_LIVE_SHUTDOWN_GRACE", "10")),
}
if os.environ.get("AGENT_LIVE_TASKS"):  # the Tasks backends of the "tasks" executor (JSON)
    TASKS = json.loads(os.environ["AGENT_LIVE_TASKS"])

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

import anthropic  # noqa: E402, F401  (imported now, not during the first turn)
