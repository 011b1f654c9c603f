"""Signals about turns, sent by the store once what they report is stored.

Both are sent with ``sender`` = the concrete session model class, after the turn's transaction
committed (so a receiver reads what was written), in the thread that ran the turn: for the
async API that is a ``database_sync_to_async`` thread, so receivers may use the ORM. They
are sent with ``send_robust``: a receiver that raises is logged by Django (the
``django.dispatch`` logger) and never changes the turn's outcome, which is already stored; the
caller still gets its session or its typed error.

``turn_completed(sender, session, run_id, output)``
    ``session`` is the updated row (``session.last_turn`` says what the turn wrote),
    ``run_id`` the :class:`~django_agent_session.models.AgentRun` id, ``output`` the
    validated output.

``turn_failed(sender, session, run_id, error)``
    ``session`` is the row as the turn read it, ``run_id`` the failed (or cancelled) run, and
    ``error`` the :class:`~django_agent_session.exceptions.AgentSessionError` the caller gets
    (:class:`~django_agent_session.exceptions.TurnCancelled` for a cancellation); ``error.turn``
    says what the failure wrote.
"""

from django.dispatch import Signal

turn_completed = Signal()
turn_failed = Signal()
