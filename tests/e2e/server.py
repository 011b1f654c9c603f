"""The example project as a real server for browser tests: daphne in a subprocess.

Each server gets its own SQLite file, the in-memory channel layer and no API key (so the offline
demo client answers), whatever the surrounding test run uses.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

from django_agent_session.testing.processes import free_port

ROOT = Path(__file__).resolve().parents[2]

#: variables of the test run that must not reach the example (it would use them)
SCRUBBED = ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "DATABASE_URL", "REDIS_URL",
            "DJANGO_SETTINGS_MODULE", "DJANGO_DEBUG")


class ExampleServer:
    """``with ExampleServer(log=path) as server: server.url("/")``: migrated, demo user created,
    serving; killed (with its process group) on exit."""

    def __init__(self, *, log: Path, demo_delay: float = 0.1, startup_timeout: float = 45.0
                 ) -> None:
        self.log_path = log
        self.demo_delay = demo_delay
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="agent-e2e-"))
        self.proc: subprocess.Popen | None = None

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
        env.update(
            DJANGO_SETTINGS_MODULE="example_project.settings",
            DATABASE_URL=f"sqlite:///{self.tmp / 'example.sqlite3'}",
            DEMO_CLIENT_DELAY=str(self.demo_delay),
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
        )
        return env

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _manage(self, *args: str) -> None:
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env,
                                capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}"
                               f"{result.stderr}")

    def _start(self) -> None:
        self._manage("migrate", "--noinput", "-v", "0")
        self._manage("ensure_demo_user")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                 "example_project.asgi:application"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)  # its own process group, killed as one
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"daphne exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url("/login/"), timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"The example did not answer within {self.startup_timeout}s:"
                                   f"\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)
