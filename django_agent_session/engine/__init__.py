"""One turn with no database: the turn generator and its drivers, and the context value object."""

from .context import Context
from .turn import TurnEngine, TurnResult, TurnState

__all__ = ["Context", "TurnEngine", "TurnResult", "TurnState"]
