"""Running test code in a thread of its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import connection


def in_thread(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` for a worker thread: it closes the thread's own database connection afterwards."""
    def run(*args: Any) -> Any:
        try:
            return fn(*args)
        finally:
            connection.close()
    return run
