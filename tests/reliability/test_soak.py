"""The bounded soak (``python -m benchmarks.soak --quick``) on the suite's database: every
figure that must be zero is zero (lost, doubled, out of order, seq gaps, mismatches, wedged
sessions, untyped errors, 5xx, closed sockets, stored changes from rejected input, cross-user
reads and writes); a part that cannot run on this database says why in the table.

SQLite runs load, model faults, fuzz and isolation (kills, and the Redis and PostgreSQL faults,
need PostgreSQL: skipped with the reason printed). PostgreSQL (``DATABASE_URL`` set) runs every
part on the soak's own PostgreSQL cluster and Redis server when ``initdb`` and ``redis-server``
are installed, else on the server ``DATABASE_URL`` names (a database of its own).

Also the loopback server's broken answers the soak uses (``Reply.garbage``, ``Reply.hang``,
``Reply.nasty_text``) as the SDK sees them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anthropic
import pytest

from django_agent_session.testing.loopback import LoopbackMessagesServer, Reply

ROOT = Path(__file__).resolve().parents[2]
#: seconds the bounded run may take (it reports its own duration in the JSON)
LIMIT = 600


def _command(tmp_path: Path) -> list[str]:
    command = [sys.executable, "-m", "benchmarks.soak", "--quick", "--seed", "19",
               "--out", str(tmp_path / "soak.json")]
    url = os.environ.get("DATABASE_URL")
    if not url:
        return [*command, "--databases", "sqlite"]
    from benchmarks.soak.common import PrivatePostgres

    if PrivatePostgres.available() is None:
        return [*command, "--databases", "postgres"]
    return [*command, "--databases", "postgres", "--postgres-url", url]


def test_quick_soak_has_zero_where_it_must(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the soak uses benchmarks.settings
    proc = subprocess.run(_command(tmp_path), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=LIMIT, check=False)
    table = proc.stdout + proc.stderr[-3000:]
    data = json.loads((tmp_path / "soak.json").read_text())
    assert data["failed"] == {}, table
    assert proc.returncode == 0, table
    results = data["results"]
    assert set(results) >= {"load", "faults", "fuzz", "isolation", "kills"}
    ran = [(part, db) for part, by_db in results.items() for db, r in by_db.items()
           if "figures" in r]
    assert ("load", "sqlite" if not os.environ.get("DATABASE_URL") else "postgres") in ran
    load = next(iter(results["load"].values()))
    assert load["figures"]["turns completed"] == load["figures"]["turns sent"] > 0
    for part, by_db in results.items():
        for db, result in by_db.items():
            if "skipped" in result:  # a reason, printed in the table
                assert result["skipped"] and result["skipped"] in proc.stdout, (part, db)
    if not os.environ.get("DATABASE_URL"):
        assert "needs several daphne processes" in results["kills"]["sqlite"]["skipped"]
        assert any("skipped on SQLite" in note for note in results["faults"]["sqlite"]["notes"])


def test_garbage_answer_reaches_the_sdk_as_garbage():
    with LoopbackMessagesServer([Reply.garbage(b"{nope"), Reply.garbage(b"\xff\xfe")]) as srv:
        client = anthropic.Anthropic(**srv.client_kwargs(max_retries=0))
        with pytest.raises(json.JSONDecodeError):
            client.messages.create(model="m", max_tokens=10,
                                   messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(UnicodeDecodeError):
            with client.messages.stream(model="m", max_tokens=10,
                                        messages=[{"role": "user", "content": "hi"}]) as stream:
                list(stream)
        assert [r.status for r in srv.message_requests] == [200, 200]


def test_nasty_text_arrives_as_sent():
    with LoopbackMessagesServer([Reply.nasty_text()]) as srv:
        client = anthropic.Anthropic(**srv.client_kwargs(max_retries=0))
        message = client.messages.create(model="m", max_tokens=10,
                                         messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text == "nul\x00 and lone \ud800 surrogates \udfff"
