"""The README's Quick start, followed literally in a fresh ``django-admin startproject`` project.

The steps come from README.md: each fenced block that follows a ``<!-- quickstart: ... -->``
comment, in order. The comment says what to do with the block:

- ``sh``: shell commands, run with bash in the current directory (a ``cd`` carries over to the
  next block). A ``pip install`` line is checked (what it names is installed here) instead of
  run: the package is installed editable in this venv.
- ``<path> append`` / ``<path> replace`` / ``<path> create``: a file of the project (``append``
  and ``replace`` edit one that ``startproject``/``startapp`` made, ``create`` a new one).
- ``manage.py shell``: run with ``python manage.py shell -c``.
- ``server``: ``python manage.py runserver``, started in the background on a free port. The
  README's ``127.0.0.1:8000`` becomes that port in the blocks after it; nothing else changes.

It all runs offline (the demo client), with this venv's ``python`` and ``django-admin`` first on
``PATH`` and none of the suite's Django settings in the environment.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

from django_agent_session.testing.processes import free_port

#: the fresh project has its own SQLite database: scripts/test runs this on its SQLite pass only
pytestmark = pytest.mark.own_database

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"^<!-- quickstart: (.+?) -->\n```\w*\n(.*?)^```$", re.M | re.S)
DEFAULT_ADDRESS = "127.0.0.1:8000"


def quickstart_steps() -> list[tuple[str, str]]:
    """(instruction, block) for every marked block of the README's Quick start, in order."""
    text = README.read_text()
    section = text.split("<!-- quickstart: begin -->", 1)[1].split("<!-- quickstart: end -->")[0]
    steps = MARKER.findall(section)
    assert steps, "no <!-- quickstart: ... --> blocks in the README"
    return steps


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH") and not k.startswith("ANTHROPIC_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def check_pip_line(line: str) -> None:
    """The packages ``pip install`` names are the ones installed here."""
    names = [word for word in line.split()[2:] if not word.startswith("-")]
    assert "django-agent-session" in names
    for name in names:
        try:
            distribution(re.split(r"[<>=\[]", name)[0])
        except PackageNotFoundError:  # pragma: no cover - a README naming a wrong package
            raise AssertionError(f"the Quick start installs {name!r}, which is not a package "
                                 f"installed in the test environment") from None


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for_http(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert server.poll() is None, f"runserver exited:\n{log.read_text()}"
        try:
            get(url)
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"runserver did not answer within 30 s:\n{log.read_text()}")


def test_quickstart_runs_as_written(tmp_path):
    env = environment()
    cwd = tmp_path
    address = f"127.0.0.1:{free_port()}"
    server: subprocess.Popen | None = None
    log = tmp_path / "runserver.log"
    outputs: dict[str, list[str]] = {"sh": [], "shell": []}
    try:
        for instruction, block in quickstart_steps():
            if server is not None:
                block = block.replace(DEFAULT_ADDRESS, address)
            if instruction == "sh":
                lines = block.splitlines()
                for line in [line for line in lines if line.startswith("pip install ")]:
                    check_pip_line(line)
                script = "\n".join(line for line in lines if not line.startswith("pip install "))
                out = run(["bash", "-euo", "pipefail", "-c", f'{script}\necho "::cwd::$PWD"'],
                          cwd, env)
                out, _, new_cwd = out.rpartition("::cwd::")
                cwd = Path(new_cwd.strip())
                outputs["sh"].append(out)
            elif instruction == "manage.py shell":
                outputs["shell"].append(run(["python", "manage.py", "shell", "-c", block],
                                            cwd, env))
            elif instruction == "server":
                assert block.strip() == "python manage.py runserver"
                assert "System check identified no issues" in run(
                    ["python", "manage.py", "check"], cwd, env)
                server = subprocess.Popen(
                    ["python", "manage.py", "runserver", address, "--noreload"], cwd=cwd,
                    env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                    start_new_session=True)
                wait_for_http(f"http://{address}/admin/login/", server, log)
                # daphne's runserver serves the admin and its static files
                assert get(f"http://{address}/admin/login/")[0] == 200
                assert get(f"http://{address}/static/admin/css/base.css")[0] == 200, log.read_text()
            else:
                path, _, mode = instruction.rpartition(" ")
                assert mode in ("append", "replace", "create"), instruction
                target = cwd / path
                state = "exists" if target.exists() else "is missing"
                assert target.exists() == (mode != "create"), f"{instruction}: the file {state}"
                if mode == "append":
                    block = target.read_text() + "\n" + block
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(block)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()

    assert server is not None, "the Quick start never starts the server"
    # the shell turn: the demo client's echo, then its tool call
    shell = "".join(outputs["shell"])
    assert "[offline demo] You said: 'Hello!'" in shell, shell
    assert "[offline demo] The tool answered: 3" in shell, shell
    assert shell.rstrip().endswith("6"), shell
    # over REST (curl): a started conversation, then alice's list (the shell's and this one)
    sh = "".join(outputs["sh"])
    assert '"status":"completed"' in sh and "You said: 'Hello over REST'" in sh, sh
    assert '"count":2' in sh, sh
    # over the WebSocket (talk.py): the REST conversation's state, the reply streamed, done
    assert "session.state 1 turn(s)" in sh, sh
    assert "You said: 'Hello over a WebSocket'" in sh, sh
    assert sh.rstrip().endswith("completed"), sh
