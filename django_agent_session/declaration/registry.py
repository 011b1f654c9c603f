"""Which installed models declare an agent: the one answer every layer asks for."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from django.apps import apps

from .options import AgentOptions

if TYPE_CHECKING:
    from ..records import SessionRecord


def session_models() -> list[type[SessionRecord]]:
    """Every installed concrete model whose ``Agent`` declaration was parsed."""
    # only AgentSessionModel subclasses (SessionRecord rows) get ``agent_options`` parsed
    return cast("list[type[SessionRecord]]",
                [m for m in apps.get_models()
                 if isinstance(getattr(m, "agent_options", None), AgentOptions)])


def resolve_session_models(models_: Iterable[Any] | None) -> list[type[SessionRecord]]:
    """``models_`` (classes or ``"app_label.Model"`` strings) checked to be session models;
    ``None`` means all of them."""
    known = session_models()
    if models_ is None:
        return known
    resolved: list[type[SessionRecord]] = []
    for item in models_:
        model = apps.get_model(item) if isinstance(item, str) else item
        if model not in known:
            raise ValueError(f"{model!r} is not a concrete session model")
        resolved.append(cast("type[SessionRecord]", model))  # one of ``known``
    return resolved
