"""The session row's lease and status columns, stored at one size in every state on SQLite.

SQLite overwrites a record in place only when its size is unchanged; otherwise it writes the
whole record again, overflow pages included. A session row carries the conversation's context,
so taking a turn's lease (a token and an expiry where there were ``NULL``\\ s, ``running`` where
``idle`` was) used to rewrite the whole history before the model was called (1.3 ms for a
283 kB record, measured with ``sqlite3`` alone; docs/performance.md). These fields keep the
Python values (``None``, ``"idle"``) and store them at a fixed size on SQLite: ``None`` as a
sentinel of the same width as a real value, a status padded to the longest status. Lookups
mean what they mean on the plain fields (``isnull``, comparisons of the expiry, pattern lookups
of the status); transforms, database functions and aggregates see the stored values.
PostgreSQL writes a new row version on any update and never copies an unchanged TOASTed
context, so there they store what the plain fields store.
"""

from __future__ import annotations

import functools
import uuid
from datetime import datetime
from typing import Any

from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import lookups

#: a free lease's token on SQLite: 32 hex digits, as a real token is stored there
FREE_TOKEN = uuid.UUID(int=0)
#: a free lease's expiry on SQLite: in the past, and written with microseconds like any expiry
FREE_EXPIRY = datetime(1970, 1, 1, 0, 0, 0, 1)
#: SQLite's text for a datetime (Django's), without and with microseconds
_SECONDS_WIDTH, _MICROSECONDS = 19, ".000000"


def _fixed_size(connection: BaseDatabaseWrapper) -> bool:
    return connection.vendor == "sqlite"


class _FreeIsNull(lookups.IsNull):
    """``isnull`` (and ``exact=None``) of a column that stores ``None`` as a sentinel on SQLite;
    a plain ``NULL`` (a row written before these fields) counts as ``None`` too."""

    def as_sqlite(self, compiler: Any, connection: BaseDatabaseWrapper) -> Any:
        if not isinstance(self.rhs, bool):
            return super().as_sql(compiler, connection)  # (raises IsNull's own error)
        sql, params = compiler.compile(self.lhs)
        free = self.lhs.output_field.get_db_prep_value(None, connection)
        if self.rhs:
            return f"({sql} IS NULL OR {sql} = %s)", [*params, *params, free]
        return f"({sql} IS NOT NULL AND {sql} <> %s)", [*params, *params, free]


class LeaseTokenField(models.UUIDField):
    """The run holding the turn lease, or ``None``; on SQLite a free lease is
    :data:`FREE_TOKEN`."""

    def get_db_prep_value(self, value: Any, connection: BaseDatabaseWrapper,
                          prepared: bool = False) -> Any:
        if value is None and _fixed_size(connection):
            value = FREE_TOKEN
        return super().get_db_prep_value(value, connection, prepared)

    def from_db_value(self, value: Any, expression: Any, connection: BaseDatabaseWrapper) -> Any:
        return None if value == FREE_TOKEN else value


class LeaseExpiryField(models.DateTimeField):
    """When the turn lease expires, or ``None``; on SQLite a free lease is
    :data:`FREE_EXPIRY` and every value is written with microseconds."""

    def get_db_prep_value(self, value: Any, connection: BaseDatabaseWrapper,
                          prepared: bool = False) -> Any:
        if not _fixed_size(connection):
            return super().get_db_prep_value(value, connection, prepared)
        if value is None:
            return FREE_EXPIRY.isoformat(" ")
        text = super().get_db_prep_value(value, connection, prepared)
        if isinstance(text, str) and len(text) == _SECONDS_WIDTH:
            text += _MICROSECONDS  # a whole second, rarely: the same width as the rest
        return text

    def from_db_value(self, value: Any, expression: Any, connection: BaseDatabaseWrapper) -> Any:
        if isinstance(value, datetime) and value.replace(tzinfo=None) == FREE_EXPIRY:
            return None
        return value


class _NotFree:
    """A comparison of an expiry that, like SQL's with ``NULL``, never matches a free lease
    (whose sentinel on SQLite is in 1970, so before any moment compared with)."""

    def as_sqlite(self, compiler: Any, connection: BaseDatabaseWrapper) -> Any:
        sql, params = self.as_sql(compiler, connection)  # type: ignore[attr-defined]
        column, column_params = compiler.compile(self.lhs)  # type: ignore[attr-defined]
        free = self.lhs.output_field.get_db_prep_value(  # type: ignore[attr-defined]
            None, connection)
        return f"({sql} AND {column} <> %s)", [*params, *column_params, free]


class _Trimmed:
    """A pattern lookup of a padded status that sees the status without its padding (SQLite's
    ``LIKE`` and ``REGEXP`` ignore the column's collation)."""

    def process_lhs(self, compiler: Any, connection: BaseDatabaseWrapper,
                    lhs: Any = None) -> Any:
        sql, params = super().process_lhs(compiler, connection, lhs)  # type: ignore[misc]
        return (f"RTRIM({sql})" if _fixed_size(connection) else sql), params


for _field_class in (LeaseTokenField, LeaseExpiryField):
    _field_class.register_lookup(_FreeIsNull)
for _comparison in (lookups.LessThan, lookups.LessThanOrEqual, lookups.Range):
    LeaseExpiryField.register_lookup(
        type(f"Leased{_comparison.__name__}", (_NotFree, _comparison), {}))


class StatusField(models.CharField):
    """A status from ``choices``; on SQLite padded with spaces to the longest choice (and read
    back without them), so that changing it leaves the record's size as it was. The column
    compares with SQLite's ``RTRIM`` collation, so a status stored unpadded (before this
    field) still matches its filters, and its pattern lookups trim the padding."""

    def db_parameters(self, connection: BaseDatabaseWrapper) -> dict[str, Any]:
        parameters = super().db_parameters(connection)
        if _fixed_size(connection) and parameters.get("collation") is None:
            parameters["collation"] = "RTRIM"
        return parameters

    def get_db_prep_value(self, value: Any, connection: BaseDatabaseWrapper,
                          prepared: bool = False) -> Any:
        value = super().get_db_prep_value(value, connection, prepared)
        if isinstance(value, str) and _fixed_size(connection):
            return value.ljust(self._width)
        return value

    def from_db_value(self, value: Any, expression: Any, connection: BaseDatabaseWrapper) -> Any:
        return value.rstrip(" ") if isinstance(value, str) else value

    @functools.cached_property
    def _width(self) -> int:
        return max((len(str(value)) for value, _label in self.flatchoices), default=0)


for _pattern in (lookups.IExact, lookups.EndsWith, lookups.IEndsWith, lookups.Regex,
                 lookups.IRegex):
    StatusField.register_lookup(type(f"Trimmed{_pattern.__name__}", (_Trimmed, _pattern), {}))
