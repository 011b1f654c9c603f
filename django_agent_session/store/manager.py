"""The queryset/manager methods every concrete session model gets.

``start_session``, ``continue_session`` and ``get_context`` (and their ``a``-prefixed async
twins) validate first, then run one turn: store ``begin`` → engine → store ``commit`` (or
``fail``). The async twins call the model on the running event loop and reach the database only
through ``database_sync_to_async``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Protocol

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.core.exceptions import ValidationError
from django.db import DatabaseError, models
from django.utils import timezone

from .. import exceptions as exc
from ..conf import agent_settings
from ..declaration.attachments import attachment_fields
from ..declaration.schemas import field_names, validate
from ..declaration.tools import ToolContext
from ..engine.attachments import AttachingClient
from ..engine import telemetry
from ..engine.context import CONFIG_KEY, Context, storable
from ..engine.hooks import Hooks, Rendered
from ..engine.turn import (
    ProgressCallback,
    TurnPaused,
    TurnEngine,
    TurnResult,
    TurnState,
    aguard_progress,
    guard_progress,
    user_blocks_for,
)
from ..records import AgentEvent, AgentRun, Multitask, RunStatus, SessionRecord
from ..signals import turn_completed, turn_failed
from . import local_runs
from .attachments import SessionFiles, attach
from .dispatch import dispatch, observer
from .events import append_event
from .heartbeat import akeep_alive, keep_alive
from .history import logged_messages
from .lease import retry_after
from .queries import SessionQueryMixin
from .queue import BUSY, Drained, RunQueue, Submission
from .sessions import insert_session
from .turns import SessionStore, Turn, TurnRecord
from .watch import SyncWatch

logger = logging.getLogger("django_agent_session")

#: one store and one engine per session model, built on first use (an engine is rebuilt when
#: the model's options are, as tests that swap tools do)
_stores: dict[type[SessionRecord], SessionStore] = {}
_engines: dict[type[SessionRecord], TurnEngine] = {}
#: ``Multitask.values`` builds a list on every access
MULTITASK_VALUES = frozenset(Multitask.values)


class AgentSessionQuerySet(SessionQueryMixin, models.QuerySet):
    """Session queries plus the three session operations."""

    # -- helpers -----------------------------------------------------------------------------

    @property
    def _options(self) -> Any:
        options = self.model.agent_options
        if options is None:
            raise TypeError(f"{self.model.__name__} is abstract or has no Agent declaration")
        return options

    def _store(self) -> SessionStore:
        store = _stores.get(self.model)
        if store is None:
            store = _stores[self.model] = SessionStore(self.model)
        return store

    def _engine(self, options: Any = None) -> TurnEngine:
        """The model's engine; for a configured conversation's ``options``, one of its own
        (built per turn: a copy of the options and a small object)."""
        if options is not None and options is not self._options:
            return TurnEngine(options)
        engine = _engines.get(self.model)
        if engine is None or engine.options is not self._options:
            engine = _engines[self.model] = TurnEngine(self._options)
        return engine

    def _configured(self, context: Context) -> Any:
        """The options a turn on ``context`` runs with: the declaration's, as the
        conversation's stored configuration changes them."""
        return self._options.configured(context.config)

    def validate_config(self, config: Any) -> dict[str, Any]:
        """Check a conversation's configuration (``InvalidConfig``, naming each key) and
        return it as it would be stored: what a factory's ``config`` is checked with at
        connect."""
        return self._options.configured(config).config if config else {}

    def _prepare_input(self, input: Any, session: Any = None,
                       origin: dict[str, Any] | None = None, *, attachments: bool = True
                       ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The validated input and its user blocks. Attachment ids must be ``session``'s (a
        session or its pk; and its sender's, from ``origin``): they become reference blocks
        (store/attachments.py). ``attachments=False`` checks their shape only (no database)."""
        validated, label = self._validated(input)
        files = attachment_fields(self._options.input_serializer)
        if attachments and any(validated.get(name) for name in files):
            pk = None if session is None else self._pk(session)
            validated = attach(self.model, pk, validated, list(files),
                               user_id=(origin or {}).get("user_id"), label=label)
        return validated, self._user_blocks(validated, label)

    async def _aprepare_input(self, input: Any, session: Any = None,
                              origin: dict[str, Any] | None = None
                              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """:meth:`_prepare_input` for async callers (the attachment check reads the database)."""
        validated, label = self._validated(input)
        files = attachment_fields(self._options.input_serializer)
        if any(validated.get(name) for name in files):
            pk = None if session is None else self._pk(session)
            validated = await database_sync_to_async(attach)(
                self.model, pk, validated, list(files),
                user_id=(origin or {}).get("user_id"), label=label)
        return validated, self._user_blocks(validated, label)

    def _validated(self, input: Any) -> tuple[dict[str, Any], str]:
        options = self._options
        if isinstance(input, str) and "message" in field_names(options.input_serializer):
            input = {"message": input}
        label = options.error_label("input_schema")
        if isinstance(input, Mapping) and input.get("attachments") and \
                not attachment_fields(options.input_serializer):  # never dropped silently
            raise exc.InvalidInput({"attachments": ["This agent's input takes no attachments."]},
                                   label=label)
        # DRF's CharField refuses U+0000 and lone surrogates; a JSONField does not, and either
        # would wedge the conversation on the database or on the next model call
        return storable(validate(options.input_serializer, input, label=label)), label

    def _user_blocks(self, validated: dict[str, Any], label: str) -> list[dict[str, Any]]:
        blocks = user_blocks_for(validated)
        size = sum(len(b.get("text", "")) for b in blocks)
        limit = agent_settings.MAX_INPUT_CHARS
        if size > limit:
            raise exc.InvalidInput(
                {"non_field_errors": [f"Input is {size} characters; the limit is {limit}."]},
                "Input too large.", label=label)
        return blocks

    def validate_input(self, input: Any) -> dict[str, Any]:
        """Validate one turn's input as a turn would (``InvalidInput``), without running it.

        Surfaces use it to reject bad input before they commit to a response (an SSE 200, a
        queued WebSocket message); the turn validates again when it runs.
        """
        return self._prepare_input(input, attachments=False)[0]

    def initial_context(self, instruction_args: dict[str, Any] | None = None,
                        config: dict[str, Any] | None = None) -> Context:
        """The context a new session starts with: validated args, rendered system prompt
        (after the ``after_render`` hooks), and the conversation's ``config`` (checked:
        ``InvalidConfig``; its ``instruction_args`` win over the caller's)."""
        options = self._options
        stored = options.configured(config).config if config else {}
        args = instruction_args or {}
        if stored.get("instruction_args") and isinstance(args, Mapping):
            args = {**args, **stored["instruction_args"]}
        label = options.error_label("instruction_schema")
        if options.instruction_serializer is not None:
            args = validate(options.instruction_serializer, args, exc.InvalidInstructionArgs,
                            "Invalid instruction args.", label=label)
        elif not isinstance(args, Mapping):  # the template reads args as a mapping
            raise exc.InvalidInstructionArgs({"non_field_errors": ["Expected an object."]},
                                             "Invalid instruction args.", label=label)
        args = storable(args)  # what the database and the model's request can hold
        system = options.template.render(args)
        hooks = Hooks(options)
        if hooks.after_render:
            system = hooks.render(Rendered(system=system, instruction_args=args,
                                           model=self.model, config=stored))
        return Context(system=storable(system), instruction_args=args,
                       metadata={CONFIG_KEY: stored} if stored else {})

    async def _ainitial_context(self, instruction_args: dict[str, Any] | None,
                                config: dict[str, Any] | None) -> Context:
        """:meth:`initial_context` from the event loop: in a thread when ``after_render``
        hooks run (they may be sync and use the ORM, or async through ``async_to_sync``)."""
        if self._options.hooks.get("after_render"):
            return await database_sync_to_async(self.initial_context)(instruction_args, config)
        return self.initial_context(instruction_args, config)

    def _pk(self, session_or_pk: Any) -> Any:
        if isinstance(session_or_pk, models.Model):
            return session_or_pk.pk
        try:
            return self.model._meta.pk.to_python(session_or_pk)
        except ValidationError:
            raise exc.SessionNotFound(f"No {self.model.__name__} with id {session_or_pk!r}.") \
                from None

    def _client(self, turn: Turn, options: Any = None) -> AttachingClient:
        """The turn's client, sending the session's attachments as the API's blocks (read
        from storage once per turn; engine/attachments.py); ``options``: a configured
        conversation's (its model may be another provider's)."""
        files = SessionFiles(self.model, turn.session.pk)
        # wrapped only when a turn has attachments to locate: the wrapper costs more than a
        # short turn's own work (docs/performance.md)
        return AttachingClient((options or self._options).get_client(), files,
                               locate_async=lambda ids: database_sync_to_async(files.locate)(ids))

    def _tool_context(self, turn: Turn) -> Any:
        return ToolContext(turn.session, turn.run_id)

    def _queue(self) -> RunQueue:
        return RunQueue(self._store())

    def _multitask(self, multitask: str | None) -> str:
        value = multitask or self._options.multitask
        if value not in MULTITASK_VALUES:
            raise ValueError(f"multitask must be one of {', '.join(Multitask.values)}; "
                             f"got {value!r}")
        return value

    # -- sync --------------------------------------------------------------------------------

    def start_session(self, input: Any, *, instruction_args: dict[str, Any] | None = None,
                      owner: Any = None, title: str = "",
                      on_progress: ProgressCallback | None = None, wait: bool = True,
                      idempotency_key: str | None = None,
                      origin: dict[str, Any] | None = None,
                      config: dict[str, Any] | None = None) -> Any:
        """Create a session and run its first turn; returns the saved session.

        With ``wait=False`` the first message is queued and handed to the executor; the
        committed ``queued`` :class:`~django_agent_session.models.AgentRun` is returned.
        ``config`` configures this conversation (docs/live.md, "Per-conversation
        configuration"): its model, instruction args, a subset of the tools, limits.
        """
        validated, blocks = self._prepare_input(input)
        context = self.initial_context(instruction_args, config)
        if not wait:
            run = self._queue().create(self.model(owner=owner, title=title), context,
                                       input=validated, user_blocks=blocks,
                                       idempotency_key=idempotency_key,
                                       origin=telemetry.with_trace(origin))
            dispatch(self.model, run.session_id)
            return run
        turn = self._store().create(context=context, owner=owner, title=title,
                                    input=validated, user_blocks=blocks,
                                    idempotency_key=idempotency_key)
        return self._run(turn, context, on_progress)

    def create_session(self, *, instruction_args: dict[str, Any] | None = None,
                       owner: Any = None, title: str = "", config: dict[str, Any] | None = None,
                       **fields: Any) -> Any:
        """Create a session without running a turn (its first message comes later);
        ``config`` as :meth:`start_session`'s."""
        context = self.initial_context(instruction_args, config)
        return insert_session(self.model(owner=owner, title=title, **fields), context)

    def continue_session(self, session_or_pk: Any, input: Any, *,
                         on_progress: ProgressCallback | None = None, wait: bool = True,
                         idempotency_key: str | None = None,
                         multitask: str | None = None,
                         origin: dict[str, Any] | None = None) -> Any:
        """Run one turn on an existing session; returns the saved session.

        The message is a committed run before anything else happens. ``wait=False`` returns
        that ``queued`` run and leaves the turn to the executor. ``idempotency_key`` names the
        message: a resubmission returns (or waits for) the run it named. ``multitask`` (default
        ``Agent.multitask``) says what to do when the session already has runs.
        """
        validated, blocks = self._prepare_input(input, session_or_pk, origin)
        pk, multitask = self._pk(session_or_pk), self._multitask(multitask)
        if wait and idempotency_key is None and multitask in (Multitask.ENQUEUE,
                                                              Multitask.REJECT):
            begun = self._store().try_begin(pk, input=validated, user_blocks=blocks)
            if isinstance(begun, Turn):  # nothing ahead of it: run at once (the fast path)
                return self._run_claimed(begun, on_progress)
            if multitask == Multitask.REJECT:
                raise self._busy(begun)
        submitted = self._submit(pk, validated, blocks, idempotency_key, multitask, origin)
        if not wait:
            return submitted.run
        return self._wait(submitted.run, on_progress)

    def submit(self, session_or_pk: Any, input: Any, *, idempotency_key: str | None = None,
               multitask: str | None = None, origin: dict[str, Any] | None = None,
               dispatch: bool = True,
               owner_check: Callable[[Any], bool] | None = None) -> Submission:
        """Queue a message and hand it to the executor: ``continue_session(wait=False)``
        that also says whether the run is new and its place in line. ``origin`` (who sent it,
        through what, under which ``ref``) is stored on the run and shown to viewers. With
        ``dispatch=False`` the caller hands it on (:meth:`dispatch`) when it is ready to
        (after announcing it, so viewers hear of it before it starts). ``owner_check``
        (called with the session's owner id under the row lock, in the transaction that queues
        the message) refuses it with ``PermissionDenied`` when it returns False: a surface's
        access rule at no extra round trip."""
        validated, blocks = self._prepare_input(input, session_or_pk, origin)
        return self._submit(self._pk(session_or_pk), validated, blocks, idempotency_key,
                            self._multitask(multitask), origin, dispatch, owner_check)

    def dispatch(self, session_or_pk: Any) -> None:
        """Hand the session's queue to the executor (after the current transaction)."""
        dispatch(self.model, self._pk(session_or_pk))

    def _submit(self, pk: Any, validated: dict[str, Any], blocks: list[dict[str, Any]],
                idempotency_key: str | None, multitask: str, origin: dict[str, Any] | None,
                hand_on: bool = True, owner_check: Callable[[Any], bool] | None = None
                ) -> Submission:
        submitted = self._queue().submit(pk, input=validated, user_blocks=blocks,
                                         idempotency_key=idempotency_key,
                                         multitask=multitask,
                                         origin=telemetry.with_trace(origin),
                                         owner_check=owner_check)
        if submitted.created and hand_on:
            dispatch(self.model, pk)
        if submitted.interrupted is not None:  # at once if it runs in this process
            local_runs.cancel(submitted.interrupted)
        return submitted

    def cancel_run(self, run_id: Any) -> AgentRun:
        """Cancel a run: a queued one at once, a running one wherever it runs (its executor
        notices within ``CANCEL_CHECK_SECONDS``, at once in this process). Returns the run."""
        run = self._queue().cancel(run_id)
        if run.status == RunStatus.RUNNING:
            local_runs.cancel(run.pk)
        return run

    def append_event(self, session_or_pk: Any, type: str, data: dict[str, Any] | None = None,
                     *, event_id: str | None = None) -> AgentEvent:
        """Append an event from outside a turn (a webhook, a job) with the session's next
        ``seq``. ``type`` is ``custom.<name>`` (the other types are the library's); ``data``
        a JSON object of at most ``EVENT_MAX_BYTES``; otherwise ``InvalidInput``.

        ``event_id`` (unique per session) makes it safe to retry: an id stored before returns
        that event, and nothing is appended. ``created`` on the returned event says which.
        """
        return append_event(self._store(), self._pk(session_or_pk), type, data, key=event_id)

    # -- approvals ---------------------------------------------------------------------------

    def pending_tool_calls(self, session_or_pk: Any) -> list[dict[str, Any]]:
        """The session's tool calls waiting for a decision: ``{"run_id", "tool_use_id",
        "name", "input", "expires_at"}``, oldest first."""
        return self._queue().pending(self._pk(session_or_pk))

    def approve_tool_call(self, session_or_pk: Any, tool_use_id: str, *, by: Any = None,
                          input: dict[str, Any] | None = None, dispatch: bool = True
                          ) -> AgentRun:
        """Approve a paused call (with an edited ``input``, validated against the tool's
        schema); the turn goes on once every call of its response is decided. ``by`` is the
        deciding user (checked by :meth:`may_decide`; ``None``: your own code decides).

        Returns the run as the decision left it: ``queued`` when it was the last undecided
        call (the turn resumes), else still ``awaiting_approval``. With ``dispatch=False`` a
        resumed run is not handed to the executor: the caller does it (:meth:`dispatch`) once
        it has told the viewers of the decision, so they hear of it before the run goes on."""
        return self._decide(session_or_pk, tool_use_id, by, approved=True, input=input,
                            hand_on=dispatch)

    def reject_tool_call(self, session_or_pk: Any, tool_use_id: str, *, by: Any = None,
                         reason: str = "", dispatch: bool = True) -> AgentRun:
        """Reject a paused call: the model gets an error result carrying ``reason``
        (returns and ``dispatch`` as :meth:`approve_tool_call`)."""
        return self._decide(session_or_pk, tool_use_id, by, approved=False, reason=reason,
                            hand_on=dispatch)

    def may_decide(self, session: Any, user: Any) -> bool:
        """Whether ``user`` may decide the session's calls: its owner, or whom
        ``AGENT_SESSION["APPROVERS"]`` (a callable ``(session, user) -> bool``) admits."""
        if user is None:
            return True
        if session.owner_id is not None and session.owner_id == getattr(user, "pk", None):
            return True
        approvers = agent_settings.APPROVERS
        return bool(approvers is not None and approvers(session, user))

    def _decide(self, session_or_pk: Any, tool_use_id: str, by: Any, *, approved: bool,
                input: dict[str, Any] | None = None, reason: str = "",
                hand_on: bool = True) -> AgentRun:
        pk = self._pk(session_or_pk)
        session = self.model._base_manager.filter(pk=pk).first()
        if session is None or not self.may_decide(session, by):  # as missing: a 404
            raise exc.ToolCallNotFound(f"No pending tool call {tool_use_id!r} on this session.")
        decision: dict[str, Any] = {"approved": approved,
                                    "by": getattr(by, "pk", None), "reason": storable(reason)}
        if input is not None:
            call = next((c for c in self._queue().pending(pk)
                         if c["tool_use_id"] == tool_use_id), None)
            tool = self._options.tools.get(call["name"]) if call else None
            if tool is not None:
                validate(tool.serializer, input, message=f"Invalid input for tool {tool.name}.")
            decision["input"] = input
        run, resumed = self._queue().decide(pk, tool_use_id, decision)
        if resumed and hand_on:
            dispatch(self.model, pk)
        return run

    def find_run(self, session_or_pk: Any, ref: str | None = None) -> AgentRun | None:
        """The session's run named ``ref`` (its idempotency key, a WebSocket ``ref``), or
        without ``ref`` the run holding the session's lease; ``None`` when there is none."""
        pk = self._pk(session_or_pk)
        runs = self._queue().runs(pk)
        if ref is not None:
            return runs.filter(idempotency_key=ref).first()
        token = self.model._base_manager.filter(pk=pk).values_list("lease_token", flat=True)
        return runs.filter(pk__in=token, status=RunStatus.RUNNING).first()

    def drain(self, session_or_pk: Any) -> int:
        """Run the session's queued runs in order until none is left; how many ran.

        Returns at once when another executor holds the lease (it drains what is queued).
        """
        return async_to_sync(self.adrain)(session_or_pk)

    def get_context(self, pk: Any, *, full_history: bool = False) -> Context:
        """The stored context of session ``pk``: what the next turn sends. With
        ``full_history``, its messages are everything ever said, rebuilt from the event log
        (what compaction summarized included)."""
        session = self._get(pk)
        context = session.get_context()
        if full_history:
            context.messages = logged_messages(session)
        return context

    def _get(self, pk: Any) -> Any:
        pk = self._pk(pk)
        try:
            return self.get(pk=pk)
        except self.model.DoesNotExist as error:
            raise exc.SessionNotFound(f"No {self.model.__name__} with id {pk}.") from error

    def _busy(self, waited: float) -> exc.SessionBusy:
        if waited == 0.0:
            return exc.SessionBusy("Messages are already queued on this session.")
        return exc.SessionBusy(retry_after=retry_after(waited))

    def _context_of(self, turn: Turn) -> Context:
        """The context a claimed turn runs on (a paused turn's must not have changed)."""
        if turn.resume is not None and turn.session.version != turn.resume_version:
            error = exc.AgentSessionError(
                "The conversation changed (reset or rewound) while tool calls awaited "
                "approval; the paused turn cannot go on.")
            error.code = "context_changed"
            raise error
        return turn.session.get_context()

    def _run_claimed(self, turn: Turn, on_progress: ProgressCallback | None,
                     handoff: bool = True) -> Any:
        """Run a turn whose lease this caller holds; then hand on what was queued meanwhile
        (unless the caller claims it itself: ``handoff=False``)."""
        try:
            context = self._context_of(turn)
        except BaseException as error:  # unreadable stored data: fail the run, free the lease
            raise self._failed(turn, error, TurnState())  # noqa: B904
        try:
            return self._run(turn, context, on_progress)
        finally:
            if handoff and turn.events_appended and self._queue().has_queued(turn.session.pk):
                dispatch(self.model, turn.session.pk)

    def _wait(self, run: AgentRun, on_progress: ProgressCallback | None) -> Any:
        """Wait for a queued run, helping to drain the queue in front of it.

        Until ``TURN_WAIT_SECONDS`` pass, this caller runs whatever is first in line when the
        lease is free (its own run, or one an executor left behind); after that, a run still
        queued is withdrawn and :class:`SessionBusy` raised, as before runs were queued. A
        run that paused for approvals (wherever it ran) ends the wait: nobody may decide soon.
        """
        queue, pk = self._queue(), run.session_id
        deadline = time.monotonic() + agent_settings.TURN_WAIT_SECONDS
        while True:
            claimed = queue.claim(pk)
            if isinstance(claimed, Turn):
                if claimed.run_id != run.pk:  # a run in front of ours: streamed to its viewers
                    self._run_observed(claimed)
                    continue  # its outcome is recorded on it; go on to ours
                return self._run_claimed(claimed, on_progress)
            current = queue.runs(pk).filter(pk=run.pk).first()
            if current is None:
                raise exc.SessionNotFound(f"No {self.model.__name__} with id {pk}.")
            if current.finished or current.status == RunStatus.AWAITING_APPROVAL:
                return self._outcome(current)
            if current.status == RunStatus.QUEUED and time.monotonic() >= deadline:
                withdrawn = queue.cancel(current.pk, BUSY)
                if withdrawn.status == RunStatus.CANCELLED:
                    raise self._busy(claimed or 0.0)
            time.sleep(agent_settings.TURN_POLL_SECONDS)

    def _run_observed(self, turn: Turn) -> None:
        """Run a claimed queued run of someone else's, streamed to the conversation's
        viewers (sync twin of :meth:`_arun_observed`; its outcome is recorded on it)."""
        watcher = self._watcher(turn)
        try:
            watch = SyncWatch(watcher) if watcher is not None else None
        except Exception:  # no thread for its loop: it runs unobserved
            logger.exception("No observer for run %s; it runs unobserved.", turn.run_id)
            watch = None
        try:
            try:
                session = self._run_claimed(turn, watch.on_progress if watch else None,
                                            handoff=False)
            except exc.AgentSessionError as error:
                if watch is not None:
                    watch.finished(getattr(error, "turn", turn.record), error)
            else:
                if watch is not None:
                    watch.finished(session.last_turn, None)
        finally:
            if watch is not None:
                watch.close()

    def _outcome(self, run: AgentRun) -> Any:
        """The session after ``run`` (ran by another executor), or the error it ended with;
        a run paused for approvals is an outcome too (``last_turn.status`` says so)."""
        record = self._queue().record(run)
        if run.status in (RunStatus.COMPLETED, RunStatus.AWAITING_APPROVAL):
            session = self._get(run.session_id)
            session.last_turn = record
            return session
        error = exc.from_dict(run.error)
        error.turn = record  # type: ignore[attr-defined]
        raise error

    def _run(self, turn: Turn, context: Context, on_progress: ProgressCallback | None) -> Any:
        on_progress = guard_progress(on_progress)

        store, state = self._store(), TurnState()
        local_runs.add(turn.run_id, turn.cancel_event)
        try:
            options = self._configured(context)  # a stale configuration fails the run
            state = self._state(turn, options)
            with telemetry.turn(options, turn.session.pk, turn.run_id, turn.origin,
                                paused=(TurnPaused,)) as span:
                if options.config:
                    self._record_config(turn, options)
                if on_progress is not None:
                    on_progress("run.started", {"run_id": str(turn.run_id)})
                with keep_alive(store, turn):
                    result = self._engine(options).run(
                        context, turn.user_blocks, self._client(turn, options), state=state,
                        tool_context=self._tool_context(turn), on_progress=on_progress,
                        heartbeat=lambda: store.renew(turn),
                        cancelled=turn.cancel_event.is_set, resume=turn.resume)
                span.result(result)
                session = store.commit(turn, context, result)
        except TurnPaused as paused:
            return self._paused(turn, paused, state)
        except BaseException as error:
            raise self._failed(turn, error, state)  # noqa: B904 (cause set in _failed)
        finally:
            local_runs.discard(turn.run_id)
        self._completed(session, turn, result)
        return session

    def _budgeted(self, options: Any = None) -> bool:
        options = options or self._options
        return bool(options.token_budget) or options.cost_budget is not None

    def _state(self, turn: Turn, options: Any = None) -> TurnState:
        """A turn's state to start from: with a budget, what the session spent outside its
        context (one query; an agent without a budget does not pay for it)."""
        if not self._budgeted(options):
            return TurnState()
        return TurnState(outside=self._store().spent_outside_context(turn.session.pk))

    def _record_config(self, turn: Turn, options: Any) -> None:
        """Record on the run the configuration it runs with (``origin["config"]``) and the
        configured model (the ``model`` column; the reply's model replaces it as usual)."""
        turn.origin = {**turn.origin, CONFIG_KEY: options.config}
        AgentRun.objects.filter(pk=turn.run_id).update(origin=turn.origin,
                                                      model=options.model_name)

    def _paused(self, turn: Turn, paused: TurnPaused, state: TurnState) -> Any:
        """Record a turn paused for approvals; the session, whose ``last_turn`` says so."""
        timeout = self._options.approval_timeout
        expires = timezone.now() + timedelta(seconds=timeout) if timeout else None
        turn.record = self._store().pause(turn, paused, state, expires)
        if timeout:  # someone must look once the deadline passed, if nobody decides
            dispatch(self.model, turn.session.pk, after=float(timeout))
        session = turn.session
        session.last_turn = turn.record
        return session

    def _failed(self, turn: Turn, error: BaseException, state: TurnState) -> BaseException:
        """Record the failure; return the exception the caller should see."""
        status = RunStatus.FAILED
        typed: exc.AgentSessionError
        if not isinstance(error, Exception):  # CancelledError, KeyboardInterrupt, SystemExit
            status, typed = RunStatus.CANCELLED, exc.TurnCancelled("The turn was cancelled.")
            if error.args[:1] == (local_runs.SHUTDOWN,):
                status, typed = RunStatus.FAILED, exc.TurnInterrupted(
                    "The server shut down before the turn finished.")
        elif isinstance(error, exc.AgentSessionError):
            typed = error
            if isinstance(error, exc.TurnCancelled):
                status = RunStatus.CANCELLED
            elif isinstance(error, (exc.ReplyIncomplete, exc.ModelRefused)):
                status = RunStatus(error.run_status)
        else:
            typed = exc.AgentSessionError(f"{type(error).__name__}: {error}")
            typed.code = "internal_error"
        try:
            record = self._store().fail(turn, typed, state, status)
        except DatabaseError as refused:  # what the turn carried could not be stored
            logger.exception("Recording the failure of run %s failed; recording it plainly.",
                             turn.run_id)
            cause = typed
            typed = exc.AgentSessionError(storable(
                f"{typed.code}: {typed} (recording it failed: {type(refused).__name__})"))
            typed.code = "internal_error"
            typed.__cause__ = cause
            status = RunStatus.FAILED
            record = self._store().fail(turn, typed, state, plain=True)
        turn.record = record
        self._send_failed(turn, typed)
        if not isinstance(error, Exception):
            error.turn = record  # type: ignore[attr-defined]  # set on a BaseException too
            return error  # cancellation (or exit) must keep propagating as such
        if typed is not error:
            typed.__cause__ = error
        typed.session = turn.session  # type: ignore[attr-defined]
        typed.turn = record  # type: ignore[attr-defined]
        return typed

    def _completed(self, session: Any, turn: Turn, result: TurnResult) -> None:
        turn_completed.send_robust(self.model, session=session, run_id=turn.run_id,
                                   output=result.output)

    def _send_failed(self, turn: Turn, error: exc.AgentSessionError) -> None:
        turn_failed.send_robust(self.model, session=turn.session, run_id=turn.run_id,
                                error=error)

    # -- async -------------------------------------------------------------------------------

    async def astart_session(self, input: Any, *, instruction_args: dict[str, Any] | None = None,
                             owner: Any = None, title: str = "",
                             on_progress: ProgressCallback | None = None, wait: bool = True,
                             idempotency_key: str | None = None,
                             origin: dict[str, Any] | None = None,
                             config: dict[str, Any] | None = None) -> Any:
        """Async twin of :meth:`start_session`."""
        validated, blocks = self._prepare_input(input)
        context = await self._ainitial_context(instruction_args, config)
        if not wait:
            run = await database_sync_to_async(self._queue().create)(
                self.model(owner=owner, title=title), context, input=validated,
                user_blocks=blocks, idempotency_key=idempotency_key,
                origin=telemetry.with_trace(origin))
            await database_sync_to_async(dispatch)(self.model, run.session_id)
            return run
        turn, cancel = await self._settled(
            self._store().create, context=context, owner=owner, title=title, input=validated,
            user_blocks=blocks, idempotency_key=idempotency_key)
        if cancel is not None:  # the session was created holding a lease: release it
            raise await database_sync_to_async(self._failed)(turn, cancel, TurnState())
        return await self._arun_watched(turn, context, on_progress)

    async def acreate_session(self, **kwargs: Any) -> Any:
        """Async twin of :meth:`create_session`."""
        return await database_sync_to_async(self.create_session)(**kwargs)

    async def acontinue_session(self, session_or_pk: Any, input: Any, *,
                                on_progress: ProgressCallback | None = None, wait: bool = True,
                                idempotency_key: str | None = None,
                                multitask: str | None = None,
                                origin: dict[str, Any] | None = None) -> Any:
        """Async twin of :meth:`continue_session` (waits without blocking the loop)."""
        validated, blocks = await self._aprepare_input(input, session_or_pk, origin)
        pk, multitask = self._pk(session_or_pk), self._multitask(multitask)
        if wait and idempotency_key is None and multitask in (Multitask.ENQUEUE,
                                                              Multitask.REJECT):
            begun, cancel = await self._settled(self._store().try_begin, pk, input=validated,
                                                user_blocks=blocks)
            if cancel is not None:
                if isinstance(begun, Turn):  # the lease was taken meanwhile: release it
                    raise await database_sync_to_async(self._failed)(begun, cancel,
                                                                     TurnState())
                raise cancel
            if isinstance(begun, Turn):
                return await self._arun_claimed(begun, on_progress)
            if multitask == Multitask.REJECT:
                raise self._busy(begun)
        submitted = await database_sync_to_async(self._submit)(
            pk, validated, blocks, idempotency_key, multitask, origin)
        if not wait:
            return submitted.run
        return await self._await(submitted.run, on_progress)

    async def asubmit(self, session_or_pk: Any, input: Any, **kwargs: Any) -> Submission:
        """Async twin of :meth:`submit`."""
        return await database_sync_to_async(self.submit)(session_or_pk, input, **kwargs)

    async def aappend_event(self, session_or_pk: Any, type: str,
                            data: dict[str, Any] | None = None, *, event_id: str | None = None
                            ) -> AgentEvent:
        """Async twin of :meth:`append_event`."""
        return await database_sync_to_async(self.append_event)(session_or_pk, type, data,
                                                               event_id=event_id)

    async def apending_tool_calls(self, session_or_pk: Any) -> list[dict[str, Any]]:
        """Async twin of :meth:`pending_tool_calls`."""
        return await database_sync_to_async(self.pending_tool_calls)(session_or_pk)

    async def aapprove_tool_call(self, session_or_pk: Any, tool_use_id: str, **kwargs: Any
                                 ) -> AgentRun:
        """Async twin of :meth:`approve_tool_call`."""
        return await database_sync_to_async(self.approve_tool_call)(session_or_pk,
                                                                    tool_use_id, **kwargs)

    async def areject_tool_call(self, session_or_pk: Any, tool_use_id: str, **kwargs: Any
                                ) -> AgentRun:
        """Async twin of :meth:`reject_tool_call`."""
        return await database_sync_to_async(self.reject_tool_call)(session_or_pk,
                                                                   tool_use_id, **kwargs)

    async def acancel_run(self, run_id: Any) -> AgentRun:
        """Async twin of :meth:`cancel_run`."""
        return await database_sync_to_async(self.cancel_run)(run_id)

    async def adrain(self, session_or_pk: Any, *,
                     observe: Callable[[Turn], RunObserver] | None = None,
                     keep_going: Callable[[], bool] | None = None) -> int:
        """Async twin of :meth:`drain`. ``observe(turn)`` returns the observer of each run:
        its ``on_progress`` gets the progress, ``finished(record, error)`` the outcome; by
        default the live layer's, which streams the run to the conversation's viewers.
        ``keep_going()`` is asked before each claim (a shutting-down executor stops
        claiming)."""
        drained = await self.adrain_queue(session_or_pk, observe=observe, keep_going=keep_going)
        return drained.ran

    async def adrain_queue(self, session_or_pk: Any, *,
                           observe: Callable[[Turn], RunObserver] | None = None,
                           keep_going: Callable[[], bool] | None = None) -> Drained:
        """:meth:`adrain`, saying also why it stopped: an executor that stops at runs queued
        behind another's lease learns when to look again from the claim that found it, with
        no query of its own."""
        pk, ran = self._pk(session_or_pk), 0
        while keep_going is None or keep_going():
            claimed, cancel = await self._settled(self._queue().claim, pk)
            if cancel is not None:
                if isinstance(claimed, Turn):
                    await database_sync_to_async(self._failed)(claimed, cancel, TurnState())
                raise cancel
            if not isinstance(claimed, Turn):
                return Drained(ran, claimed)  # nothing queued, or the seconds a lease is held
            ran += 1
            await self._arun_observed(claimed, self._watcher(claimed, observe))
        return Drained(ran)

    def _watcher(self, turn: Turn, observe: Callable[[Turn], RunObserver] | None = None
                 ) -> RunObserver | None:
        """The observer of a claimed run (``observe``'s, else the live layer's); ``None``
        if building it fails: the run is claimed and must run, and progress is a courtesy."""
        try:
            return observe(turn) if observe is not None else observer(self.model, turn)
        except Exception:
            logger.exception("No observer for run %s; it runs unobserved.", turn.run_id)
            return None

    async def _arun_observed(self, turn: Turn, watcher: RunObserver | None) -> None:
        """Run a claimed queued run, telling ``watcher`` its progress and how it ended (an
        error is recorded on the run, not raised; cancelling the caller still propagates).
        No hand-off: the caller claims what comes next, after ``watcher`` told the end."""
        progress = watcher.on_progress if watcher is not None else None
        try:
            session = await self._arun_claimed(turn, progress, handoff=False)
        except exc.AgentSessionError as error:  # recorded on its run
            if watcher is not None:
                await watcher.finished(getattr(error, "turn", turn.record), error)
        except asyncio.CancelledError as error:  # this drain is being stopped
            if watcher is not None:
                await asyncio.shield(watcher.finished(turn.record, error))
            raise
        else:
            if watcher is not None:
                await watcher.finished(session.last_turn, None)

    async def aget_context(self, pk: Any, *, full_history: bool = False) -> Context:
        """Async twin of :meth:`get_context`."""
        return await database_sync_to_async(self.get_context)(pk, full_history=full_history)

    async def _arun_claimed(self, turn: Turn, on_progress: ProgressCallback | None,
                            handoff: bool = True) -> Any:
        try:
            context = self._context_of(turn)
        except BaseException as error:  # unreadable stored data: fail the run, free the lease
            failure = await database_sync_to_async(self._failed)(turn, error, TurnState())
            raise failure  # noqa: B904
        try:
            return await self._arun_watched(turn, context, on_progress)
        finally:
            if handoff and turn.events_appended and await database_sync_to_async(
                    self._queue().has_queued)(turn.session.pk):
                await database_sync_to_async(dispatch)(self.model, turn.session.pk)

    async def _await(self, run: AgentRun, on_progress: ProgressCallback | None) -> Any:
        """Async twin of :meth:`_wait`."""
        queue, pk = self._queue(), run.session_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + agent_settings.TURN_WAIT_SECONDS
        while True:
            claimed, cancel = await self._settled(queue.claim, pk)
            if cancel is not None:
                if isinstance(claimed, Turn):
                    await database_sync_to_async(self._failed)(claimed, cancel, TurnState())
                raise cancel
            if isinstance(claimed, Turn):
                if claimed.run_id != run.pk:  # a run in front of ours: streamed to its viewers
                    await self._arun_observed(claimed, self._watcher(claimed))
                    continue
                return await self._arun_claimed(claimed, on_progress)
            current = await queue.runs(pk).filter(pk=run.pk).afirst()
            if current is None:
                raise exc.SessionNotFound(f"No {self.model.__name__} with id {pk}.")
            if current.finished or current.status == RunStatus.AWAITING_APPROVAL:
                return await database_sync_to_async(self._outcome)(current)
            if current.status == RunStatus.QUEUED and loop.time() >= deadline:
                withdrawn = await database_sync_to_async(queue.cancel)(current.pk, BUSY)
                if withdrawn.status == RunStatus.CANCELLED:
                    raise self._busy(claimed or 0.0)
            await asyncio.sleep(agent_settings.TURN_POLL_SECONDS)

    async def _arun_watched(self, turn: Turn, context: Context,
                            on_progress: ProgressCallback | None) -> Any:
        """:meth:`_arun` in a task of its own, so a requested cancel ends the turn, not the
        caller: the caller then gets :class:`TurnCancelled`. Cancelling the caller still
        cancels the turn (and propagates)."""
        child = asyncio.create_task(self._arun(turn, context, on_progress),
                                    name=f"agent-run-{turn.run_id}")
        local_runs.add(turn.run_id, child)
        try:
            return await asyncio.shield(child)
        except asyncio.CancelledError as cancel:
            if not child.done():  # the caller was cancelled: the turn goes with it
                child.cancel(*cancel.args)
                await asyncio.wait([child])
                cancel.turn = turn.record  # type: ignore[attr-defined]
                raise
            if not child.cancelled():
                raise
            if turn.record is not None and turn.record.status == RunStatus.COMPLETED:
                return turn.session  # the cancel came while the commit ran: it completed
            error = exc.TurnCancelled("The run was cancelled.")
            error.session, error.turn = turn.session, turn.record  # type: ignore[attr-defined]
            raise error from None
        finally:
            local_runs.discard(turn.run_id)

    async def _arun(self, turn: Turn, context: Context,
                    on_progress: ProgressCallback | None) -> Any:
        on_progress = aguard_progress(on_progress)

        store, state = self._store(), TurnState()
        try:
            options = self._configured(context)  # a stale configuration fails the run
            if self._budgeted(options):
                state = await database_sync_to_async(self._state)(turn, options)
            with telemetry.turn(options, turn.session.pk, turn.run_id, turn.origin,
                                paused=(TurnPaused,)) as span:
                if options.config:
                    await database_sync_to_async(self._record_config)(turn, options)
                if on_progress is not None:
                    await on_progress("run.started", {"run_id": str(turn.run_id)})
                async with akeep_alive(store, turn):
                    result = await self._engine(options).arun(
                        context, turn.user_blocks, self._client(turn, options), state=state,
                        tool_context=self._tool_context(turn), on_progress=on_progress,
                        heartbeat=database_sync_to_async(lambda: store.renew(turn)),
                        resume=turn.resume)
                span.result(result)
                session, cancel = await self._settled(store.commit, turn, context, result)
        except TurnPaused as paused:
            session, cancel = await self._settled(self._paused, turn, paused, state)
            if cancel is not None:
                raise cancel from None
            return session
        except BaseException as error:
            failure = await asyncio.shield(database_sync_to_async(self._failed)(turn, error, state))
            raise failure  # noqa: B904
        if turn_completed.has_listeners(self.model):  # receivers may use the ORM
            await database_sync_to_async(self._completed)(session, turn, result)
        if cancel is not None:  # cancelled while the commit ran: the turn completed all the same
            cancel.turn = turn.record = session.last_turn  # type: ignore[attr-defined]
            raise cancel
        return session

    @staticmethod
    async def _settled(call: Any, *args: Any, **kwargs: Any) -> tuple[Any, BaseException | None]:
        """``database_sync_to_async(call)(...)`` whose outcome a cancellation cannot hide.

        A cancellation reaches the awaiting coroutine, not the thread, so the call runs to its
        end anyway; what it did (a lease taken, a turn committed) must be known to be undone or
        reported. Returns ``(result, cancellation or None)``; if the call failed after a
        cancellation, the cancellation is raised.
        """
        task = asyncio.ensure_future(database_sync_to_async(call)(*args, **kwargs))
        try:
            return await asyncio.shield(task), None
        except asyncio.CancelledError as cancel:
            try:
                result = await task
            except BaseException:
                raise cancel from None
            return result, cancel


class RunObserver(Protocol):
    """What :meth:`AgentSessionQuerySet.adrain` tells about each run it runs."""

    async def on_progress(self, kind: str, data: dict[str, Any]) -> None: ...

    async def finished(self, record: TurnRecord | None, error: BaseException | None
                       ) -> None: ...


AgentSessionManager = models.Manager.from_queryset(AgentSessionQuerySet)
AgentSessionManager.__name__ = "AgentSessionManager"


__all__ = ["AgentSessionManager", "AgentSessionQuerySet"]
