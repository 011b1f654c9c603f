"""Who is viewing a conversation, aggregated by its live session (the owner).

Every consumer announces itself to the owner when it joins, re-announces periodically, and says
goodbye when it leaves; a new owner asks the group for a roll call. A consumer whose process died
never says goodbye, so a viewer not heard from within ``stale_after`` seconds is dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Viewer:
    user_id: Any
    seen: float


class Presence:
    """Viewers keyed by their consumer's channel name."""

    __slots__ = ("stale_after", "viewers")

    def __init__(self, stale_after: float) -> None:
        self.stale_after = stale_after
        self.viewers: dict[str, Viewer] = {}

    def join(self, channel: str, user_id: Any) -> bool:
        """Add or refresh a viewer; returns whether the set of viewers changed."""
        known = channel in self.viewers
        self.viewers[channel] = Viewer(user_id, time.monotonic())
        return not known

    def leave(self, channel: str) -> bool:
        return self.viewers.pop(channel, None) is not None

    def expire(self) -> bool:
        """Drop viewers not heard from lately; returns whether any was dropped."""
        limit = time.monotonic() - self.stale_after
        stale = [channel for channel, viewer in self.viewers.items() if viewer.seen < limit]
        for channel in stale:
            del self.viewers[channel]
        return bool(stale)

    def has_stale(self) -> bool:
        """Whether :meth:`expire` would drop a viewer now (a cheap check, run every tick)."""
        limit = time.monotonic() - self.stale_after
        return any(viewer.seen < limit for viewer in self.viewers.values())

    @property
    def count(self) -> int:
        return len(self.viewers)

    def snapshot(self) -> dict[str, Any]:
        """``{"count": connections, "user_ids": [distinct viewers]}``."""
        user_ids = sorted({v.user_id for v in self.viewers.values()}, key=str)
        return {"count": len(self.viewers), "user_ids": user_ids}
