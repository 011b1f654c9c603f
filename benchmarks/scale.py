"""Scale: idle conversations held by one ASGI process, and turns per second with 1, 2 and 4
ASGI processes (Redis channel layer, PostgreSQL, model delay 50 ms).

Needs the live layer; until it is available the rows are reported as pending.
"""

from __future__ import annotations

import argparse
from typing import Any

PENDING = "pending live layer"


def run_all(args: argparse.Namespace, base_env: dict[str, str]) -> dict[str, Any]:
    return {"idle_memory": {"pending": PENDING}, "throughput": {"pending": PENDING}}
