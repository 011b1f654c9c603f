"""How the admin searches: Django's word splitting and lookups, JSON text and pasted UUIDs."""

from __future__ import annotations

import uuid

from django.utils.text import smart_split, unescape_string_literal


def _parse_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        return None


def _search_bits(search_term: str) -> list[str]:
    """The words of an admin search, as ``ModelAdmin.get_search_results`` splits them."""
    bits = []
    for bit in smart_split(search_term):
        if bit.startswith(('"', "'")) and bit[0] == bit[-1]:
            bit = unescape_string_literal(bit)
        bits.append(bit)
    return bits


def _search_lookup(field_name: str) -> str:
    """The ORM lookup of one ``search_fields`` entry (the prefixes Django's admin knows)."""
    for prefix, lookup in (("^", "istartswith"), ("=", "iexact"), ("@", "search")):
        if field_name.startswith(prefix):
            return f"{field_name[1:]}__{lookup}"
    return f"{field_name}__icontains"
