"""Signals about turns, sent by the store once what they report is stored.

Both are sent with ``sender`` = the concrete session model class, once per run that started
and ended, after the run's transaction committed (so a receiver reads what was written), in the
thread that ran the turn: for the async API and for durable runs on the executor that is a
``database_sync_to_async`` thread, so receivers may use the ORM. A queued run sends them where
the executor drains it (the web process for the inline executor, the worker for ``tasks``).
Nothing is sent for input refused before a run exists (``InvalidInput``, ``SessionBusy``), for a
queued run cancelled before it ran, for a turn pausing for approvals (its resumed run sends one
when it ends), or for events appended from outside a turn. They are sent with
``send_robust``: a receiver that raises is logged by Django (the ``django.dispatch`` logger)
and never changes the turn's outcome, which is already stored; the caller still gets its
session or its typed error. Receivers also get Django's ``signal`` argument.

``turn_completed(sender, session, run_id, output)``
    ``session`` is the updated row (``session.last_turn`` says what the turn wrote),
    ``run_id`` the :class:`~django_agent_session.models.AgentRun` id, ``output`` the
    validated output.

``turn_failed(sender, session, run_id, error)``
    ``session`` is the row as the turn read it, ``run_id`` the failed (or cancelled) run, and
    ``error`` the :class:`~django_agent_session.exceptions.AgentSessionError` the caller gets
    (:class:`~django_agent_session.exceptions.TurnCancelled` for a cancellation,
    ``TurnInterrupted`` for a shutdown, ``ReplyIncomplete`` / ``ModelRefused`` for a reply cut
    off or refused); ``error.turn`` says what the failure wrote.

Documented in docs/events.md ("Signals").
"""

from django.dispatch import Signal

turn_completed = Signal()
turn_failed = Signal()
