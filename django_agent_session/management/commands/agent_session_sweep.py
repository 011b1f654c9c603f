"""``manage.py agent_session_sweep``: hand stranded queues to the executor.

A queue is stranded when the process that should drain it died after the submission committed
(the next submission on the session, or the conversation's next live owner, would also pick it
up). ``--every N`` sweeps every N seconds until interrupted. Under the inline executor the
runs then execute in this command's process.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ...runs.drain import sweep


class Command(BaseCommand):
    help = "Hand queued runs nobody is draining to the executor (once, or --every N seconds)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--every", type=float, default=None, metavar="SECONDS",
                            help="Sweep again every SECONDS until interrupted.")

    def handle(self, *args: Any, every: float | None = None, **options: Any) -> None:
        while True:
            handed = sweep()
            if options["verbosity"] >= 1:
                self.stdout.write(f"Handed {handed} stranded queue(s) to the executor.")
            if every is None:
                return
            time.sleep(every)
