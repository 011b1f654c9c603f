"""``python -m benchmarks``: run every benchmark, print the tables, write JSON.

Each measurement runs in its own process on a freshly created database (see
:mod:`benchmarks.worker`): the SQLite file database in two journal modes, and PostgreSQL when it
is reachable (``--postgres-url``; the benchmarks create and drop their own database named
``agent_session_bench`` on that server, never the one in the URL). ``--suites restart`` (not in
the default run) kills and restarts daphne processes, see :mod:`benchmarks.restart`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from django_agent_session.testing.processes import ASGI_SERVERS

from . import report
from .db import BENCH_DB_NAME, postgres_reachable, with_database

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SUITES = ("overhead", "sdk", "streaming", "scale", "cache")
#: ``restart`` (a few minutes of process kills) runs only when asked for
ALL_SUITES = (*DEFAULT_SUITES, "restart")
ALL_DATABASES = ("sqlite", "sqlite-delete", "postgres")


def _env(base: dict[str, str], **changes: str | None) -> dict[str, str]:
    env = dict(base)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    return env


def run_worker(suite: str, env: dict[str, str], extra: list[str], timeout: float) -> dict[str, Any]:
    """Run one suite in a fresh process; its JSON result, or ``{"error": ...}``."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = tmp.name
    command = [sys.executable, "-m", "benchmarks.worker", suite, "--out", out, *extra]
    print(f"  running {suite}: {' '.join(extra)}", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
        with open(out) as fh:
            return json.load(fh)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    finally:
        Path(out).unlink(missing_ok=True)


def database_envs(args: argparse.Namespace, base: dict[str, str]) -> dict[str, dict[str, str] | str]:
    """Worker environment per database, or the reason it is skipped."""
    envs: dict[str, dict[str, str] | str] = {}
    for db in args.databases:
        if db == "sqlite":
            envs[db] = _env(base, DATABASE_URL=None, BENCH_SQLITE_JOURNAL="wal")
        elif db == "sqlite-delete":
            envs[db] = _env(base, DATABASE_URL=None, BENCH_SQLITE_JOURNAL="delete")
        elif db == "postgres":
            problem = postgres_reachable(args.postgres_url)
            envs[db] = (f"skipped: PostgreSQL not reachable ({problem})" if problem else
                        _env(base, DATABASE_URL=with_database(args.postgres_url, BENCH_DB_NAME)))
    return envs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", default=",".join(DEFAULT_SUITES),
                        help=f"comma-separated, from {', '.join(ALL_SUITES)} "
                             f"(default: all but restart)")
    parser.add_argument("--databases", default=",".join(ALL_DATABASES),
                        help=f"comma-separated, from {', '.join(ALL_DATABASES)}")
    parser.add_argument("--sizes", default="10,100,1000", help="messages of history")
    parser.add_argument("--turns", type=int, default=200, help="measured turns per size")
    parser.add_argument("--stored-runs", type=int, default=100_000,
                        help="overhead suite: one more row at the smallest size with this "
                             "many runs of other sessions stored (0: none)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--stream-turns", type=int, default=20,
                        help="streamed turns with one viewer (fewer with 50 viewers)")
    parser.add_argument("--cache-turns", type=int, default=20,
                        help="turns of the prompt caching chat")
    parser.add_argument("--conversations", type=int, default=500,
                        help="idle conversations opened for the memory measurement")
    parser.add_argument("--load-conversations", type=int, default=32,
                        help="conversations driven in the throughput measurement")
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="measured window of each throughput run")
    parser.add_argument("--scale-parts", default="idle,throughput",
                        help="scale suite: comma-separated, from idle, throughput "
                             "(e.g. idle alone for the memory figure)")
    parser.add_argument("--servers", default="daphne,uvicorn",
                        help="streaming and scale suites: the ASGI servers to serve the live "
                             "layer with, comma-separated, from daphne, uvicorn")
    parser.add_argument("--processes", default="1,2,4",
                        help="scale suite: ASGI processes of each throughput run")
    parser.add_argument("--kills", type=int, default=20,
                        help="restart suite: SIGKILLs of the run under load")
    parser.add_argument("--chaos-seconds", type=float, default=240.0,
                        help="restart suite: most seconds of killing under load")
    parser.add_argument("--restart-lease", type=float, default=5.0,
                        help="restart suite: turn and owner lease (s) of the kill -9 runs")
    parser.add_argument("--quick", action="store_true",
                        help="few turns, to check the harness (numbers are not meaningful)")
    parser.add_argument("--postgres-url", default=os.environ.get("DATABASE_URL")
                        or "postgres://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL")
                        or "redis://127.0.0.1:6379/0")
    parser.add_argument("--out", default=str(RESULTS / "latest.json"))
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per worker")
    args = parser.parse_args(argv)
    args.suites = [s for s in args.suites.split(",") if s]
    args.databases = [d for d in args.databases.split(",") if d]
    args.scale_parts = [p for p in args.scale_parts.split(",") if p]
    args.servers = [s for s in args.servers.split(",") if s]
    if unknown := set(args.servers) - set(ASGI_SERVERS):
        parser.error(f"--servers: unknown {', '.join(sorted(unknown))} "
                     f"(choose from {', '.join(ASGI_SERVERS)})")
    if args.quick:
        args.turns, args.warmup, args.stream_turns = 30, 3, 4
        args.stored_runs = min(args.stored_runs, 2_000)
        args.conversations, args.seconds = 50, 3.0
        args.kills, args.chaos_seconds = min(args.kills, 3), min(args.chaos_seconds, 60.0)

    base = dict(os.environ)
    common = ["--turns", str(args.turns), "--warmup", str(args.warmup)]
    load_before, started = _load(), _now()
    results: dict[str, Any] = {}
    envs = database_envs(args, base)

    for suite in ("overhead", "sdk"):
        if suite in args.suites:
            results[suite] = {}
            for db, env in envs.items():
                extra = ["--stored-runs", str(args.stored_runs)] if suite == "overhead" else []
                results[suite][db] = ({"skipped": env} if isinstance(env, str) else
                                      run_worker(suite, env,
                                                 ["--sizes", args.sizes, *common, *extra],
                                                 args.timeout))
    if "cache" in args.suites:  # the same on every database: SQLite only
        results["cache"] = run_worker("cache", _env(base, DATABASE_URL=None), [
            "--turns", str(args.cache_turns)], args.timeout)
    if "streaming" in args.suites:
        from .streaming import run_all as run_streaming

        results["streaming"] = run_streaming(args, base)
    if "scale" in args.suites:
        from .scale import run_all as run_scale

        results["scale"] = run_scale(args, base)
    if "restart" in args.suites:
        from .restart import run_all as run_restart

        results["restart"] = run_restart(args, base)

    data = {"meta": _meta(argv, load_before, started), "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, default=str))
    print(report.render(data))
    print(f"\nJSON written to {out}")
    return 0


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _meta(argv: list[str] | None, load_before: str, started: str) -> dict[str, Any]:
    """The run's context; ``date`` is when it started (with the load then), ``ended`` when
    it finished."""
    import anthropic
    import django

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True, check=False).stdout.strip() or "?"
    except OSError:
        commit = "?"
    args = sys.argv[1:] if argv is None else argv
    return {
        "date": started,
        "ended": _now(),
        "commit": commit,
        "command": " ".join(["python -m benchmarks", *map(shlex.quote, args)]),
        "python": platform.python_version(),
        "django": django.get_version(),
        "anthropic": anthropic.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": _load(),
    }


if __name__ == "__main__":
    sys.exit(main())
