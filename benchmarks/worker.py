"""One benchmark in a fresh process: ``python -m benchmarks.worker SUITE --out FILE [...]``.

The command line (``python -m benchmarks``) runs every suite through this module, one process
per suite and database, so each measurement starts from a fresh database and interpreter and
the database is chosen by environment (``DATABASE_URL``, ``REDIS_URL``) before Django starts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def overhead(args: argparse.Namespace) -> Any:
    from .overhead import run_scripted

    return run_scripted(_sizes(args.sizes), args.turns, args.warmup, args.stored_runs)


def sdk(args: argparse.Namespace) -> Any:
    from .overhead import run_sdk

    return run_sdk(_sizes(args.sizes), args.turns, args.warmup)


def streaming(args: argparse.Namespace) -> Any:
    from .streaming import run_streaming

    return run_streaming(_sizes(args.viewers), args.turns, args.warmup)


def idle_memory(args: argparse.Namespace) -> Any:
    from .scale import run_idle_memory

    return run_idle_memory(args.conversations)


def throughput(args: argparse.Namespace) -> Any:
    from .scale import run_throughput

    return run_throughput(_sizes(args.processes), args.conversations, args.seconds)


def restart(args: argparse.Namespace) -> Any:
    from .restart import run_restart

    return run_restart(args.mode)


def chaos(args: argparse.Namespace) -> Any:
    from .restart import run_chaos

    return run_chaos(int(args.processes), args.conversations, args.kills, args.seconds)


def cache(args: argparse.Namespace) -> Any:
    from .cache import run_cache

    return run_cache(args.turns)


SUITES: dict[str, Callable[[argparse.Namespace], Any]] = {
    "cache": cache,
    "overhead": overhead,
    "sdk": sdk,
    "streaming": streaming,
    "idle_memory": idle_memory,
    "throughput": throughput,
    "restart": restart,
    "chaos": chaos,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("--out", required=True, help="write the JSON result here")
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--stored-runs", type=int, default=0)
    parser.add_argument("--viewers", default="1,50")
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--conversations", type=int, default=500)
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--mode", choices=("graceful", "rolling", "kill", "drain"),
                        default="graceful")
    parser.add_argument("--kills", type=int, default=20)
    args = parser.parse_args(argv)

    from .db import setup_django, vendor

    setup_django(fresh=True)
    result = {"database": vendor(), "rows": SUITES[args.suite](args)}
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
