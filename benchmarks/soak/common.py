"""What every part of the soak shares: the result of a part, private services, processes.

A part returns a :class:`Part`: its figures by name, which of them must be zero, and notes.
The services a part breaks on purpose (Redis stopped, PostgreSQL restarted) are private ones
the soak starts itself on free ports (:class:`PrivateRedis`, :class:`PrivatePostgres`), so
the machine's shared servers, which other test runs use, are never stopped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django_agent_session.testing.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Part:
    """The figures of one part on one database. ``zero``: the figures that must be 0."""

    figures: dict[str, Any] = field(default_factory=dict)
    zero: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def must_be_zero(self, name: str, value: int) -> None:
        self.figures[name] = value
        if name not in self.zero:
            self.zero.append(name)

    def as_dict(self) -> dict[str, Any]:
        return {"figures": self.figures, "zero": self.zero, "notes": self.notes,
                "details": self.details}


def failures(result: dict[str, Any]) -> list[str]:
    """The must-be-zero figures of a part's result that are not zero (an error counts)."""
    if "error" in result:
        return ["error"]
    figures = result.get("figures", {})
    return [name for name in result.get("zero", []) if figures.get(name)]


def env_with(base: dict[str, str], **changes: str | None) -> dict[str, str]:
    """``base`` with ``changes`` (``None`` removes), for a process of the soak: the benchmarks'
    settings, with connections closed after each request, as Django advises under ASGI, and
    health checks on (the faults drop connections)."""
    from ..__main__ import _env

    return _env(base, DJANGO_SETTINGS_MODULE="benchmarks.settings", BENCH_CONN_MAX_AGE="0",
                BENCH_CONN_HEALTH_CHECKS="1", **changes)


class PrivateRedis:
    """A ``redis-server`` of our own on a free port (nothing saved to disk): stopped and
    started again on the same port by the Redis fault."""

    def __init__(self, port: int | None = None, directory: str | None = None) -> None:
        self.port = port or free_port()
        self.dir = directory or tempfile.mkdtemp(prefix="agent-soak-redis-")

    @staticmethod
    def available() -> str | None:
        return None if shutil.which("redis-server") and shutil.which("redis-cli") else \
            "redis-server / redis-cli not installed"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1",
                        "--port", str(self.port), "--save", "", "--appendonly", "no",
                        "--dir", self.dir, "--logfile", f"{self.dir}/redis.log",
                        "--pidfile", f"{self.dir}/redis.pid"], check=True,
                       capture_output=True)
        deadline = time.monotonic() + 20
        while not self.running():
            if time.monotonic() > deadline:
                raise RuntimeError("private redis-server did not start")
            time.sleep(0.05)

    def running(self) -> bool:
        return subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True,
                              text=True, check=False).stdout.strip() == "PONG"

    def stop(self) -> None:
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"],
                       capture_output=True, check=False)
        deadline = time.monotonic() + 20
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivatePostgres:
    """A PostgreSQL cluster of our own (``initdb`` in a temporary directory, run as the
    ``postgres`` user when we are root, trust authentication on 127.0.0.1 and a free port):
    restarted by the PostgreSQL fault."""

    def __init__(self, port: int | None = None, directory: str | None = None) -> None:
        self.port = port or free_port()
        self.dir = directory or tempfile.mkdtemp(prefix="agent-soak-pg-")
        self.bin = self.bindir()

    @staticmethod
    def bindir() -> Path | None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if found:
            return found[-1].parent
        pg_ctl = shutil.which("pg_ctl")
        return Path(pg_ctl).parent if pg_ctl else None

    @classmethod
    def available(cls) -> str | None:
        if cls.bindir() is None:
            return "pg_ctl / initdb not installed"
        if os.geteuid() == 0 and not shutil.which("runuser"):
            return "running as root without runuser (initdb refuses root)"
        return None

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(args[:2])}: {proc.stderr.strip()[-500:]}")

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", f"{self.dir}/data", "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8")
        self.start()

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c max_connections=400")
        self._run("pg_ctl", "-D", f"{self.dir}/data", "-o", options, "-l",
                  f"{self.dir}/server.log", "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", f"{self.dir}/data", "-m", mode, "-w", "-t", "60", "stop")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def clean_redis(url: str, prefix: str) -> int:
    """Delete the keys under ``prefix``; how many there were."""
    from ..restart import clean_redis as clean

    return clean(url, prefix)
