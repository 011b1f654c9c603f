"""A fresh, migrated benchmark database for each worker run.

SQLite: the file is deleted and recreated. PostgreSQL: the database named in ``DATABASE_URL``
is dropped and created again through the server's ``postgres`` maintenance database, so the
benchmarks never touch a database they did not create (use a dedicated name; the command line
defaults to ``agent_session_bench``).
"""

from __future__ import annotations

import os
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


def wal_checkpoint() -> int | None:
    """On SQLite in WAL mode, checkpoint now and return how many pages the log held: the
    pages written since the last checkpoint. ``None`` on any other database or journal.

    SQLite checkpoints on its own from inside the commit that takes the log past 1,000
    pages, and that commit copies the log into the database file before it returns (about
    10 ms with a 256 kB context). The overhead suite alternates writes of a fixed size
    (library turn, reference turn, the untimed resets), so the automatic checkpoint fell on
    the same kind of write every time, whichever the order of sizes put it on: one side was
    charged the log of all four. Checkpointing between the writes, outside the timed
    regions, charges neither, and the page counts say what each side wrote.
    """
    from django.db import connection

    if connection.vendor != "sqlite":
        return None
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        if cursor.fetchone()[0].lower() != "wal":
            return None
        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
        _busy, pages, _copied = cursor.fetchone()
    return int(pages)
