"""Who may view a conversation: the access check a consumer makes before it reads or drives one.

A consumer asks at the handshake and again before every frame that reads or drives the
conversation (it may have been deleted since, and its id taken by another user's new one); a
message to a conversation it views already, whose live session runs in the same process, is
checked by its submission instead (``owner_check``, under the row lock), at no extra query. The
rule itself, who may view a conversation owned by ``owner_id``, is the consumer's overridable
``can_view``; this module reads the row and names the answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: the conversation exists and the user may view it
EXISTS = "exists"
#: there is no such conversation (yet): the user may create it
NEW = "new"
#: the conversation belongs to someone the user may not view (close 4403)
FORBIDDEN = "forbidden"


def check_access(model: Any, conversation_id: Any, can_view: Callable[[Any], bool]) -> str:
    """Sync: :data:`EXISTS`, :data:`NEW` or :data:`FORBIDDEN` for ``conversation_id``.

    Reads only the owner of the row (``DatabaseError`` propagates); ``can_view(owner_id)``
    decides.
    """
    row = model._base_manager.filter(pk=conversation_id).values("owner_id").first()
    if row is None:
        return NEW
    return EXISTS if can_view(row["owner_id"]) else FORBIDDEN
