"""A fresh, migrated benchmark database for each worker run.

SQLite: the file is deleted and recreated. PostgreSQL: the database named in ``DATABASE_URL``
is dropped and created again through the server's ``postgres`` maintenance database, so the
benchmarks never touch a database they did not create (use a dedicated name; the command line
defaults to ``agent_session_bench``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BENCH_DB_NAME = "agent_session_bench"


def with_database(url: str, name: str = BENCH_DB_NAME) -> str:
    """``url`` with its database name replaced by ``name``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def postgres_reachable(url: str) -> str | None:
    """``None`` when PostgreSQL at ``url`` answers, else the reason it does not."""
    import psycopg

    try:
        psycopg.connect(with_database(url, "postgres"), connect_timeout=3).close()
    except Exception as error:  # noqa: BLE001 (any failure means "not available")
        return f"{type(error).__name__}: {error}".strip()
    return None


def recreate(engine: str, name: str, url: str | None) -> None:
    """Drop and create the benchmark database (before Django connects to it)."""
    if engine.endswith("sqlite3"):
        path = Path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    import psycopg
    from psycopg import sql

    assert url is not None
    with psycopg.connect(with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop(url: str, name: str) -> None:
    """Drop the PostgreSQL database ``name`` on the server of ``url`` (if it exists)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def setup_django(fresh: bool = True) -> None:
    """Configure Django with ``benchmarks.settings``; with ``fresh``, rebuild and migrate."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    from django.conf import settings

    db = settings.DATABASES["default"]
    if fresh:
        recreate(db["ENGINE"], str(db["NAME"]), os.environ.get("DATABASE_URL"))
    import django

    django.setup()
    if fresh:
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)


def vendor() -> str:
    from django.db import connection

    return connection.vendor


def wal_mode() -> bool:
    """Whether the default database is SQLite with a write-ahead log."""
    from django.db import connection

    if connection.vendor != "sqlite":
        return False
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        return str(cursor.fetchone()[0]).lower() == "wal"


def wal_checkpoint() -> int:
    """Checkpoint SQLite's write-ahead log now (the caller checked :func:`wal_mode`) and
    return how many pages it held: the pages written since the last checkpoint.

    Raises if the checkpoint could not copy the whole log (a reader holding an old snapshot):
    the log would then not restart, and the counts would run on from one call to the next."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
        busy, pages, copied = cursor.fetchone()
    if busy or copied != pages:
        raise RuntimeError(f"incomplete WAL checkpoint: {copied} of {pages} pages copied")
    return int(pages)


@contextlib.contextmanager
def manual_checkpoints() -> Iterator[Callable[[], object]]:
    """On SQLite in WAL mode, no automatic checkpoints inside the block; yields what
    checkpoints (:func:`wal_checkpoint`; elsewhere, nothing), for the caller to call where
    nothing is timed.

    SQLite checkpoints on its own inside the commit that takes the log past 1,000 pages, and
    that commit copies the log into the database file before it returns (about 10 ms with a
    256 kB context). The overhead suite alternates writes of fixed sizes (library turn,
    reference turn, the untimed resets), so that checkpoint fell on the same kind of write
    every time, and which one depended on the sizes run before. The first write after a
    checkpoint also pays for restarting the log (about 0.15 to 0.2 ms here, against 0.02 to
    0.03 for a one-page commit into a log in use), so the caller checkpoints before an
    untimed write."""
    from django.db import connection

    if not wal_mode():
        yield lambda: None
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA wal_autocheckpoint")
        before = int(cursor.fetchone()[0])
        cursor.execute("PRAGMA wal_autocheckpoint = 0")
    try:
        yield wal_checkpoint
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA wal_autocheckpoint = {before}")
