"""A process that runs one turn and is killed with SIGKILL in the middle of it (test_crash.py).

Run as ``python -m tests.reliability.crash_child MODE SESSION_PK`` with
``DJANGO_SETTINGS_MODULE=tests.reliability.crash_settings``. MODE: ``sync`` (plain call),
``stream`` (streamed sync call), ``async`` (streamed async call), ``begin`` (the process
dies by itself between taking the lease and inserting its run) or ``pause`` (an
``ApprovalAgent`` turn that pauses for an approval; the process then waits to be killed).
"""

from __future__ import annotations

import asyncio
import sys


def main(mode: str, pk: str) -> None:
    import django

    django.setup()
    from tests.testapp.models import ChatAgent

    def progress(kind: str, data: dict) -> None:
        pass

    async def aprogress(kind: str, data: dict) -> None:
        pass

    if mode == "begin":  # die after the lease UPDATE, before the run INSERT (SQLite)
        import os

        from django_agent_session.store.statements import Statements

        def die(*args: object, **kwargs: object) -> None:
            os._exit(9)
        Statements._insert_run = die  # type: ignore[method-assign]
    if mode == "pause":
        import time

        from tests.testapp.models import ApprovalAgent

        session = ApprovalAgent.objects.continue_session(pk, "refund order 7, all of it")
        print("paused:", session.last_turn.status, flush=True)
        time.sleep(120)  # killed here, with the pause recorded and nothing else in memory
        sys.exit("not killed")
    if mode == "submit":
        run = ChatAgent.objects.continue_session(pk, "queued, then I exit", wait=False)
        print("queued:", run.pk, flush=True)
        return
    if mode == "async":
        asyncio.run(ChatAgent.objects.acontinue_session(pk, "doomed turn", on_progress=aprogress))
    else:
        ChatAgent.objects.continue_session(pk, "doomed turn",
                                           on_progress=progress if mode == "stream" else None)
    sys.exit("the turn finished; it should have been killed first")


if __name__ == "__main__":
    main(*sys.argv[1:3])
