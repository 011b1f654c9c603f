"""Only the store writes rows: the surfaces call it and never save, update or delete themselves.

Read from the source (as ``lint-imports`` reads imports), so a surface that starts writing a
session row on its own fails here, not in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import django_agent_session

PACKAGE = Path(django_agent_session.__file__).parent
SURFACES = ("api", "live", "admin", "management")
WRITES = {"save", "delete", "create", "bulk_create", "bulk_update", "update",
          "get_or_create", "update_or_create"}
#: what reads as a queryset, a manager or a model instance
ORM_HINTS = ("objects", "_base_manager", "_default_manager", ".filter(", ".exclude(", ".all(",
             "instance", "session", "obj")
#: (module, model) pairs that write a table other than a session row, and why
ALLOWED = {
    # the live layer's own ownership lease (which process runs a conversation's turns)
    ("live/ownership.py", "LiveOwnership"),
}


def orm_writes(path: Path) -> list[tuple[str, str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in WRITES:
            continue
        receiver = ast.unparse(node.func.value)
        if any(hint in receiver for hint in ORM_HINTS):
            found.append((receiver, node.func.attr, node.lineno))
    return found


def test_surfaces_write_no_rows_themselves():
    offenders = []
    for surface in SURFACES:
        for path in sorted((PACKAGE / surface).rglob("*.py")):
            relative = str(path.relative_to(PACKAGE))
            for receiver, method, line in orm_writes(path):
                if (relative, receiver.split(".")[0]) not in ALLOWED:
                    offenders.append(f"{relative}:{line} {receiver}.{method}()")
    assert offenders == [], "surfaces must call the store instead:\n" + "\n".join(offenders)


def test_the_scan_sees_a_write(tmp_path):
    """The scan itself works: a surface-style write is found."""
    module = tmp_path / "view.py"
    module.write_text("def destroy(instance):\n    instance.delete()\n"
                      "def rename(model, pk):\n    model._base_manager.filter(pk=pk).update(title='x')\n")
    assert orm_writes(module) == [("instance", "delete", 2),
                                  ("model._base_manager.filter(pk=pk)", "update", 4)]
