"""Streaming latency: loopback server writes a delta -> a WebSocket client receives it.

Needs the live layer (``django_agent_session.live``); until it is available the rows are
reported as pending.
"""

from __future__ import annotations

import argparse
from typing import Any

PENDING = "pending live layer"


def run_all(args: argparse.Namespace, base_env: dict[str, str]) -> dict[str, Any]:
    return {"memory": {"pending": PENDING}, "redis": {"pending": PENDING}}
