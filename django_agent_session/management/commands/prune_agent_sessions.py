"""``manage.py prune_agent_sessions``: apply the retention policy, in batches.

The policy comes from ``AGENT_SESSION["RETENTION"]``; every option overrides one field of it
(``none`` turns a limit off). ``--dry-run`` reports what a real run would delete.
"""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ...store.retention import RetentionPolicy, prune


def _optional(kind: type) -> Any:
    def parse(value: str) -> Any:
        if value.lower() in ("none", "off"):
            return None
        try:
            return kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a number or 'none', got {value!r}") from None
    return parse


#: default of the options that accept "none", to tell "not given" from "turned off"
UNSET = argparse.SUPPRESS


def _days(value: float | None) -> timedelta | None:
    return None if value is None else timedelta(days=value)


class Command(BaseCommand):
    help = ("Delete old agent sessions (with their runs, events and artifact files) and old "
            "chatty events, following AGENT_SESSION['RETENTION'].")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dry-run", action="store_true",
                            help="Count what would be deleted; delete nothing.")
        parser.add_argument("--max-age-days", type=_optional(float), default=UNSET,
                            help="Delete sessions inactive for longer than this ('none': off).")
        parser.add_argument("--max-sessions-per-owner", type=_optional(int), default=UNSET,
                            help="Keep only this many newest sessions per owner ('none': off).")
        parser.add_argument("--exempt-status", action="append", dest="exempt_statuses",
                            metavar="STATUS",
                            help="Never prune sessions in this status (repeatable; replaces "
                                 "the configured list).")
        parser.add_argument("--include-pinned", action="store_true",
                            help="Let pinned sessions be pruned too.")
        parser.add_argument("--chatty-type", action="append", dest="chatty_event_types",
                            metavar="TYPE",
                            help="An event type to prune on its own (repeatable; replaces "
                                 "the configured list).")
        parser.add_argument("--chatty-max-age-days", type=_optional(float), default=UNSET,
                            help="Delete chatty events older than this ('none': off).")
        parser.add_argument("--batch-size", type=int,
                            help="Rows per delete and transaction.")
        parser.add_argument("--model", action="append", dest="models", metavar="APP.MODEL",
                            help="Only this session model (repeatable; default: all).")
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        overrides: dict[str, Any] = {}
        if "max_age_days" in options:
            overrides["max_age"] = _days(options["max_age_days"])
        if "max_sessions_per_owner" in options:
            overrides["max_sessions_per_owner"] = options["max_sessions_per_owner"]
        if "chatty_max_age_days" in options:
            overrides["chatty_event_max_age"] = _days(options["chatty_max_age_days"])
        if options["exempt_statuses"] is not None:
            overrides["exempt_statuses"] = tuple(options["exempt_statuses"])
        if options["chatty_event_types"] is not None:
            overrides["chatty_event_types"] = tuple(options["chatty_event_types"])
        if options["include_pinned"]:
            overrides["keep_pinned"] = False
        if options["batch_size"] is not None:
            overrides["batch_size"] = options["batch_size"]
        try:
            policy = RetentionPolicy.from_settings(**overrides)
            if not policy.prunes_anything:
                self.stdout.write("Nothing to prune: the retention policy sets no limit "
                                  "(see AGENT_SESSION['RETENTION'] or --help).")
                return
            report = prune(policy, dry_run=options["dry_run"], models=options["models"])
        except (ValueError, LookupError) as error:
            raise CommandError(str(error)) from error
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2, sort_keys=True))
        else:
            self.stdout.write(str(report))

