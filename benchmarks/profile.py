"""Profile ``continue_session`` turns with pyinstrument (scripted client, fixed history size).

``python -m benchmarks.profile --history 1000 --turns 200 [--html FILE]``; the database comes
from the environment as for the benchmarks (SQLite file unless ``DATABASE_URL`` is set).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    parser.add_argument("--history", type=int, default=10)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--html", help="write an HTML report here instead of printing text")
    parser.add_argument("--interval", type=float, default=0.0002)
    args = parser.parse_args(argv)

    from .db import setup_django

    setup_django(fresh=True)
    from pyinstrument import Profiler

    from django_agent_session.testing import text_reply, use_scripted_client
    from tests.testapp.models import ChatAgent

    from .overhead import REPLY, USER_INPUT, prepared_context

    base = prepared_context(args.history)
    with use_scripted_client(default=text_reply(REPLY)) as client:
        session = ChatAgent.objects.create(context=base)
        for _ in range(10):  # warm-up
            ChatAgent.objects.continue_session(session.pk, USER_INPUT)
        profiler = Profiler(interval=args.interval)
        for _ in range(args.turns):
            ChatAgent._base_manager.filter(pk=session.pk).update(context=base)
            client.requests.clear()
            profiler.start()
            ChatAgent.objects.continue_session(session.pk, USER_INPUT)
            profiler.stop()
    if args.html:
        with open(args.html, "w") as fh:
            fh.write(profiler.output_html())
    else:
        print(profiler.output_text(unicode=True, color=False, show_all=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
