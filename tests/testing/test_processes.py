"""``django_agent_session.testing.processes``; the live tests start both servers with it."""

from __future__ import annotations

import sys

import pytest

from django_agent_session.testing.processes import asgi_server_command


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
def test_asgi_server_command_runs_this_python_on_the_port_and_application(server):
    argv = asgi_server_command(server, 8123, "tests.asgi:application")
    assert argv[:3] == [sys.executable, "-m", server]
    assert argv[-2:] == ["8123", "tests.asgi:application"]


def test_asgi_server_command_names_the_known_servers_for_an_unknown_one():
    with pytest.raises(ValueError, match="unknown ASGI server 'hypercorn'; one of daphne, uvicorn"):
        asgi_server_command("hypercorn", 8123, "tests.asgi:application")
