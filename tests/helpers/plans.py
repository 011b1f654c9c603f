"""The database's query plan of a statement, for tests about which index a query uses."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import connection, transaction


def query_plan(sql: str, params: Sequence[object] = ()) -> str:
    """The plan of ``sql``, one line per step. PostgreSQL is kept off sequential scans, which
    it prefers on a test's small tables, so that the plan shows the index it would use."""
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
            return "\n".join(str(row[-1]) for row in cursor.fetchall())
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())
