"""Watching what a test's Redis client sends."""

from __future__ import annotations

import pytest


def executed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, list[str]]]:
    """Each pipelined round trip from now on: the Redis database it went to and its commands."""
    from redis.asyncio.client import Pipeline

    trips: list[tuple[int, list[str]]] = []
    execute = Pipeline.execute

    async def spy(pipe, *args, **kwargs):  # type: ignore[no-untyped-def]
        db = pipe.connection_pool.connection_kwargs.get("db", 0)
        trips.append((db, [str(command[0][0]) for command in pipe.command_stack]))
        return await execute(pipe, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "execute", spy)
    return trips
