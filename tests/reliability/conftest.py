"""The reliability suite's marker (its ``loopback`` fixture is the shared one).

Its plain helpers are in ``tests/helpers`` (``state.raw_context``, ``state.snapshot``,
``loopback.loopback_settings``)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.reliability)
