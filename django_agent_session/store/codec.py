"""The JSON codec of a turn's hot path: orjson, spelling values as the ORM's encoder does.

The context column is read and rewritten on every turn, and at 1,000 messages the standard
library's ``json`` with :class:`~django.core.serializers.json.DjangoJSONEncoder` spends more
time on it than the database does (docs/performance.md). orjson is several times faster. It
hands dates, times and anything it does not know (``Decimal``, lazy strings, dataclasses) to
``DjangoJSONEncoder``, so a stored value is spelled as a ``JSONField`` would spell it; what it
refuses outright (integers beyond 64 bits, lone surrogates) goes through ``json`` as before.
The text differs only where both spellings are valid JSON and read back the same: non-ASCII
characters are stored as UTF-8, not as ``\\uXXXX`` escapes (the session text search,
:func:`~django_agent_session.store.queries.json_text_q`, matches both), floats may be spelled
differently (``1e16`` for ``1e+16``); and a NaN or infinite float is stored as ``null``, where
``json`` wrote the non-standard ``NaN`` that PostgreSQL refuses.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from django.core.serializers.json import DjangoJSONEncoder

_encoder = DjangoJSONEncoder()
_OPTIONS = (orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
            | orjson.OPT_PASSTHROUGH_DATACLASS)


def dumps(value: Any) -> str:
    """``value`` as JSON text, as a ``JSONField(encoder=DjangoJSONEncoder)`` would store it."""
    try:
        return orjson.dumps(value, default=_encoder.default, option=_OPTIONS).decode()
    except orjson.JSONEncodeError as error:
        if isinstance(error.__cause__, TypeError) and not isinstance(
                error.__cause__, orjson.JSONEncodeError):
            raise error.__cause__ from None  # DjangoJSONEncoder refused it: as the ORM would
        return json.dumps(value, cls=DjangoJSONEncoder)


def loads(text: str | bytes) -> Any:
    """Parse stored JSON text (``json`` for what orjson refuses: ``NaN``, lone surrogates)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
