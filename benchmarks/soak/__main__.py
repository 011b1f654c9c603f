"""``python -m benchmarks.soak``: the soak and chaos suite; one table, one JSON file.

Parts (``--parts``): ``load``, ``kills``, ``faults``, ``fuzz``, ``isolation`` (see each
module). Each part runs on each database (``--databases sqlite,postgres``) in its own process
on a fresh database, against the loopback Messages API server and real daphne processes. The
services are the soak's own: a ``redis-server`` and a PostgreSQL cluster (``initdb``) on free
ports, deleted at the end, so the faults that stop them never touch the machine's shared
servers. Without ``initdb``, ``--postgres-url`` names a server on which the soak creates (and
drops) its own database ``agent_session_soak``; the server-restart fault is then skipped.

``--quick`` is the bounded run of the ordinary suite (a minute or two); the default is the
full run documented in docs/reliability.md. ``--seed`` makes a run replayable (printed either
way). The exit status is 1 when a figure that must be zero is not.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..live import _die_with_parent
from .common import ROOT, PrivatePostgres, PrivateRedis, env_with, failures

PARTS = ("load", "kills", "faults", "fuzz", "isolation")
DATABASES = ("postgres", "sqlite")
SOAK_DB = "agent_session_soak"
RESULTS = ROOT / "benchmarks" / "results"

#: the kills part's turn and owner leases and shutdown grace (seconds): a killed turn waits
#: out its lease, so short leases keep the run short
SHORT_LEASES = {"BENCH_TURN_LEASE": "3", "BENCH_OWNER_LEASE": "3", "BENCH_SHUTDOWN_GRACE": "5"}
#: (full, quick) parameters of each part by database
PLANS: dict[str, dict[str, tuple[dict[str, Any], dict[str, Any]]]] = {
    "load": {
        "postgres": ({"turns": 10_000, "processes": 8, "sessions": 8, "streams": 2,
                      "daphnes": 2},
                     {"turns": 60, "processes": 3, "sessions": 3, "streams": 2,
                      "daphnes": 1}),
        "sqlite": ({"turns": 1_000, "processes": 4, "sessions": 4, "streams": 1,
                    "daphnes": 2},
                   {"turns": 30, "processes": 3, "sessions": 2, "streams": 1,
                    "daphnes": 1}),
    },
    "kills": {
        "postgres": ({"kills": 20, "processes": 4, "conversations": 8, "seconds": 600,
                      "rolling": 4, "env": SHORT_LEASES},
                     {"kills": 1, "processes": 2, "conversations": 2, "seconds": 30,
                      "rolling": 2, "env": SHORT_LEASES}),
    },
    "faults": {
        "postgres": ({"repeat": 3, "service": True}, {"repeat": 1, "service": True}),
        "sqlite": ({"repeat": 3, "service": False}, {"repeat": 1, "service": False}),
    },
    "fuzz": {
        "postgres": ({"requests": 5_000, "frames": 5_000}, {"requests": 120, "frames": 120}),
        "sqlite": ({"requests": 1_000, "frames": 1_000}, {"requests": 120, "frames": 120}),
    },
    "isolation": {
        "postgres": ({"rounds": 5}, {"rounds": 1}),
        "sqlite": ({"rounds": 5}, {"rounds": 1}),
    },
}
#: why a part does not run on a database
NOT_ON = {("kills", "sqlite"): "needs several daphne processes on one PostgreSQL database "
                               "(the restart benchmark's setting); runs on postgres"}


def run_part(part: str, params: dict[str, Any], env: dict[str, str], timeout: float
             ) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = tmp.name
    print(f"  {part} on {env.get('SOAK_DB_LABEL')}: {json.dumps(params)}", file=sys.stderr,
          flush=True)
    try:
        # killed with us (PR_SET_PDEATHSIG): an interrupted soak leaves no worker behind
        proc = subprocess.run([sys.executable, "-m", "benchmarks.soak.worker", part,
                               json.dumps(params), out], cwd=ROOT, env=env, timeout=timeout,
                              check=False, capture_output=True, text=True,
                              preexec_fn=_die_with_parent())  # noqa: PLW1509
        if proc.returncode != 0 or not Path(out).stat().st_size:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
            return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
        return json.loads(Path(out).read_text())
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    finally:
        Path(out).unlink(missing_ok=True)


def schemathesis(examples: int, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """``scripts/fuzz`` (schemathesis, every operation) at ``examples`` examples each."""
    started = time.monotonic()
    try:
        # scripts/fuzz runs the pytest of VENV: this interpreter's, wherever the checkout is
        proc = subprocess.run(["bash", "scripts/fuzz", f"--hypothesis-seed={env['SOAK_SEED']}"],
                              cwd=ROOT, env={**env, "EXAMPLES": str(examples),
                                             "VENV": sys.prefix}, timeout=timeout,
                              capture_output=True, text=True, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"schemathesis timed out after {timeout:.0f}s"}
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    return {"figures": {"schemathesis examples/operation": examples,
                        "schemathesis failures": int(proc.returncode != 0)},
            "zero": ["schemathesis failures"], "notes": [tail[-1] if tail else ""],
            "details": {"output_tail": tail[-40:]},
            "seconds": round(time.monotonic() - started, 1)}


def render(results: dict[str, dict[str, Any]]) -> str:
    rows = [("part", "database", "figure", "value", "")]
    for part, by_db in results.items():
        for db, result in by_db.items():
            if "skipped" in result:
                rows.append((part, db, "skipped", result["skipped"], ""))
                continue
            if "error" in result:
                rows.append((part, db, "ERROR", result["error"].strip().splitlines()[-1][:150],
                             "FAIL"))
                continue
            for name, value in result["figures"].items():
                mark = ""
                if name in result["zero"]:
                    mark = "FAIL" if value else "ok (must be 0)"
                rows.append((part, db, name, "" if value is None else str(value), mark))
            rows.append((part, db, "part seconds", str(result.get("seconds", "")), ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j != 3 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(row, widths, strict=True)))
                     .rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {part}/{db}: {note}" for part, by_db in results.items()
             for db, result in by_db.items() for note in result.get("notes", [])]
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the bounded run (1-2 minutes)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated, from {', '.join(PARTS)}")
    parser.add_argument("--databases", default=",".join(DATABASES),
                        help=f"comma-separated, from {', '.join(DATABASES)}")
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument("--postgres-url", default=None,
                        help="a PostgreSQL server to use instead of a private cluster (the "
                             f"soak creates and drops its own database {SOAK_DB} there)")
    parser.add_argument("--schemathesis-examples", type=int, default=None,
                        help="examples per operation (default 50; 0 skips; --quick: 0)")
    parser.add_argument("--set", action="append", default=[], metavar="PART.KEY=VALUE",
                        help="override one parameter, e.g. --set load.turns=2000")
    parser.add_argument("--out", default=str(RESULTS / "soak-latest.json"))
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per part")
    args = parser.parse_args(argv)
    # a SIGTERM (a timeout, CI) unwinds like Ctrl-C, so the private servers are stopped
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    parts = [p for p in args.parts.split(",") if p]
    databases = [d for d in args.databases.split(",") if d]
    unknown = (set(parts) - set(PARTS)) | (set(databases) - set(DATABASES))
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    examples = args.schemathesis_examples
    if examples is None:
        examples = 0 if args.quick else 50
    print(f"soak: seed {seed} (replay with --seed {seed}); "
          f"{'quick' if args.quick else 'full'} run", file=sys.stderr, flush=True)
    started = time.monotonic()
    load_before = _load()
    results: dict[str, dict[str, Any]] = {}
    redis = postgres = None
    # the SQLite database of this run only: two soaks at once (the test suite's SQLite and
    # PostgreSQL passes run side by side) must not share, or delete, each other's file
    workdir = Path(tempfile.mkdtemp(prefix="agent-soak-"))
    try:
        why_no_redis = PrivateRedis.available()
        if why_no_redis is None:
            redis = PrivateRedis()
            redis.start()
        pg_url, why_no_pg, private_pg = None, None, False
        if "postgres" in databases:
            if args.postgres_url:
                from ..db import postgres_reachable
                why_no_pg, pg_url = postgres_reachable(args.postgres_url), args.postgres_url
            elif (why_no_pg := PrivatePostgres.available()) is None:
                postgres = PrivatePostgres()
                postgres.init()
                pg_url, private_pg = postgres.url, True
        for part in parts:
            results[part] = {}
            for db in databases:
                plan = PLANS[part].get(db)
                if plan is None:
                    results[part][db] = {"skipped": NOT_ON.get((part, db), "not on " + db)}
                    continue
                if db == "postgres" and pg_url is None:
                    results[part][db] = {"skipped": f"PostgreSQL not available ({why_no_pg})"}
                    continue
                params = {**plan[1 if args.quick else 0], "seed": seed, "quick": args.quick}
                for override in args.set:
                    key, _, value = override.partition("=")
                    name, _, field = key.partition(".")
                    if name == part:
                        params[field] = json.loads(value)
                from ..db import with_database

                extra_env = params.pop("env", {})
                env = env_with({**os.environ, **extra_env}, SOAK_DB_LABEL=db, SOAK_SEED=str(seed),
                               DATABASE_URL=with_database(pg_url, SOAK_DB)
                               if db == "postgres" else None,
                               BENCH_SQLITE_PATH=str(workdir / "soak.sqlite3"),
                               REDIS_URL=redis.url if redis else None,
                               BENCH_REDIS_PREFIX=f"agent-soak-{part}-{db}",
                               SOAK_REDIS_PORT=str(redis.port) if redis else None,
                               SOAK_REDIS_DIR=redis.dir if redis else None,
                               SOAK_PRIVATE_PG=postgres.dir if private_pg and postgres else None,
                               SOAK_PG_PORT=str(postgres.port) if private_pg and postgres
                               else None)
                if part in ("kills",) and redis is None:
                    results[part][db] = {"skipped": f"Redis not available ({why_no_redis})"}
                    continue
                results[part][db] = run_part(part, params, env, args.timeout)
                _write(Path(args.out), {"meta": {"partial": True, "seed": seed},
                                        "results": results})  # a stopped run keeps its figures
                if part == "fuzz" and examples and "schemathesis" not in results:
                    # once, on the first database (the operations are the same on each)
                    results["schemathesis"] = {}
                    results["schemathesis"][db] = schemathesis(
                        examples, env_with(dict(os.environ), SOAK_SEED=str(seed),
                                           DATABASE_URL=pg_url if db == "postgres" else None),
                        args.timeout)
        if "fuzz" in parts and not examples:
            results["schemathesis"] = {db: {"skipped": "full run only (--schemathesis-examples)"}
                                       for db in databases}
    finally:
        if redis is not None:
            redis.close()
        if postgres is not None:
            postgres.close()
        elif args.postgres_url and "postgres" in databases:
            from ..db import drop
            with contextlib.suppress(Exception):
                drop(args.postgres_url, SOAK_DB)
        shutil.rmtree(workdir, ignore_errors=True)
    failed = {f"{part}/{db}": bad for part, by_db in results.items()
              for db, result in by_db.items() if (bad := failures(result))}
    data = {"meta": _meta(argv, seed, args.quick, load_before, time.monotonic() - started),
            "failed": failed, "results": results}
    out = Path(args.out)
    _write(out, data)
    print(render(results))
    print(f"\nseed {seed}; {data['meta']['seconds']:.0f} s; JSON written to {out}")
    if failed:
        print("NOT ZERO: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in failed.items()))
        return 1
    print("every must-be-zero figure is 0")
    return 0


def _write(out: Path, data: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, default=str))


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _meta(argv: list[str] | None, seed: int, quick: bool, load_before: str, seconds: float
          ) -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True, check=False).stdout.strip() or "?"
    args = sys.argv[1:] if argv is None else argv
    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit, "seed": seed, "quick": quick,
            "command": " ".join(["python -m benchmarks.soak", *map(shlex.quote, args)]),
            "python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "load_before": load_before, "load_after": _load(),
            "seconds": round(seconds, 1)}


if __name__ == "__main__":
    sys.exit(main())
