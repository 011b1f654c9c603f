"""Signals sent by the store. Receivers run after the turn's transaction has committed."""

from django.dispatch import Signal

# sender=session model class; session, run (AgentRun), output
turn_completed = Signal()

# sender=session model class; session (may be stale), run (AgentRun), error (AgentSessionError)
turn_failed = Signal()
