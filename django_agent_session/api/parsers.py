"""Request body parsers of the session API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class SessionJSONParser(JSONParser):
    """DRF's ``JSONParser``; a body nested too deeply for the decoder is a 400, not a 500.

    ``json`` raises ``RecursionError`` (not ``ValueError``) for e.g. 5,000 nested arrays, which
    DRF's parser does not catch.
    """

    def parse(self, stream: Any, media_type: str | None = None,
              parser_context: Mapping[str, Any] | None = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the body is nested too deeply.") from None
