"""``{{ var }}`` instruction templates.

Deliberately not Django's template engine: an instruction is a prompt, not HTML, so there is no
auto-escaping, no filters, no tags and no attribute lookups: no template code ever runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..exceptions import InvalidInstructionArgs

_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_ANY_BRACES = re.compile(r"\{\{(.*?)\}\}", re.S)


class InstructionTemplate:
    """A parsed instruction; ``variables`` is the set of slot names it uses."""

    def __init__(self, source: str, label: str | None = None) -> None:
        self.source = source
        #: what its errors name ("ChatAgent instruction args"); None: none
        self.label = label
        bad = [m.group(0) for m in _ANY_BRACES.finditer(source) if not _VAR.fullmatch(m.group(0))]
        if bad:
            raise ValueError(
                "only plain {{ name }} slots are allowed, got " + ", ".join(repr(b) for b in bad)
            )
        self.variables: frozenset[str] = frozenset(_VAR.findall(source))

    def render(self, args: Mapping[str, Any]) -> str:
        missing = sorted(self.variables - set(args))
        extra = sorted(set(args) - self.variables)
        errors: dict[str, list[str]] = {}
        for name in missing:
            errors[name] = ["This template variable is missing."]
        for name in extra:
            errors[name] = ["The instruction template has no such variable."]
        if errors:
            raise InvalidInstructionArgs(errors, "Instruction args do not match the template.",
                                        label=self.label)
        return _VAR.sub(lambda m: _to_text(args[m.group(1)]), self.source)


def _to_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_to_text(v) for v in value)
    return "" if value is None else str(value)
